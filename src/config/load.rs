//! Loading a config: the whole file for `cutover run`, or only the section
//! a subcommand needs (`[dependencies]`, `[control]`, `[deployer]`), so that
//! the rest need not be valid or readable there.

use std::path::Path;

use super::problems::ConfigError;
use super::{Config, ControlConfig, DependenciesConfig, DeployerConfig, validate};

impl Config {
    /// Reads and validates a config file. `command` (from `run -- CMD`)
    /// replaces `[app].command`.
    pub fn load(path: &Path, command: Option<Vec<String>>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), command)
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        validate::parse_dependencies(&text).map_err(|problems| ConfigError::Invalid {
            origin: path.display().to_string(),
            problems,
        })
    }

    /// Reads `cutover deployer`'s file: only `[deployer]`, all of it checked;
    /// `container` (from the command line) replaces its `container`.
    pub fn load_deployer(
        path: &Path,
        container: Option<String>,
    ) -> Result<DeployerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        validate::parse_deployer(&text, container).map_err(|problems| ConfigError::Invalid {
            origin: path.display().to_string(),
            problems,
        })
    }

    /// Reads only `[control]` of a config file (defaults when absent), for
    /// `cutover status -c FILE` and the other clients: they need the socket,
    /// not the programs' users or the secrets only the supervisor can read.
    pub fn load_control(path: &Path) -> Result<ControlConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        validate::parse_control(&text).map_err(|problems| ConfigError::Invalid {
            origin: path.display().to_string(),
            problems,
        })
    }

    /// The config of `cutover run -- CMD` without a file: behave like tini.
    pub fn for_command(command: Vec<String>) -> Result<Config, ConfigError> {
        Self::parse("", "command line", Some(command))
    }
}
