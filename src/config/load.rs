//! Loading a config: the whole file for `cutover run`, or only the section
//! a subcommand needs (`[dependencies]`, `[control]`, `[deployer]`), so that
//! the rest need not be valid or readable there.

use std::path::Path;

use super::problems::{ConfigError, Problem};
use super::{Config, ControlConfig, DependenciesConfig, DeployerConfig, validate};

impl Config {
    /// Reads and validates a config file. `command` (from `run -- CMD`)
    /// replaces `[app].command`.
    pub fn load(path: &Path, command: Option<Vec<String>>) -> Result<Config, ConfigError> {
        read_and_check(path, |text| validate::parse(text, command))
    }

    /// Validates config text; `origin` names it in error messages.
    pub fn parse(
        text: &str,
        origin: &str,
        command: Option<Vec<String>>,
    ) -> Result<Config, ConfigError> {
        validate::parse(text, command).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        })
    }

    /// Reads only `[dependencies]` of a config file (defaults when absent),
    /// for `cutover fingerprint` at image build time: the rest of the config
    /// (users, secrets, programs) need not be valid or available yet.
    pub fn load_dependencies(path: &Path) -> Result<DependenciesConfig, ConfigError> {
        read_and_check(path, validate::parse_dependencies)
    }

    /// Reads `cutover deployer`'s file: only `[deployer]`, all of it checked;
    /// `container` (from the command line) replaces its `container`.
    pub fn load_deployer(
        path: &Path,
        container: Option<String>,
    ) -> Result<DeployerConfig, ConfigError> {
        read_and_check(path, |text| validate::parse_deployer(text, container))
    }

    /// Reads only `[control]` of a config file (defaults when absent), for
    /// `cutover status -c FILE` and the other clients: they need the socket,
    /// not the programs' users or the secrets only the supervisor can read.
    pub fn load_control(path: &Path) -> Result<ControlConfig, ConfigError> {
        read_and_check(path, validate::parse_control)
    }

    /// The config of `cutover run -- CMD` without a file: behave like tini.
    pub fn for_command(command: Vec<String>) -> Result<Config, ConfigError> {
        Self::parse("", "command line", Some(command))
    }
}

/// Reads a config file and checks its text with `check`; a problem names
/// the file.
fn read_and_check<T>(
    path: &Path,
    check: impl FnOnce(&str) -> Result<T, Vec<Problem>>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check(&text).map_err(|problems| ConfigError::Invalid {
        origin: path.display().to_string(),
        problems,
    })
}
