//! The control socket's answer (`Response`) and its form on the wire.
//!
//! In Rust an answer is done or failed, never both; on the wire it is the
//! flat object every cutover version reads and writes, with `ok` and
//! `error` side by side, since the `cutover` a `docker exec` runs may be
//! another version than the one serving.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::source::DeployRecord;
use crate::status::{ReloadRecord, Status};

/// The answer to a request: done, or failed (and why, when a reason is
/// known: a deploy's record may say only its outcome). Either way with
/// what the request produced: a failed reload still has its record.
/// Written and read as `ResponseOnWire`.
#[derive(Debug, Clone)]
pub enum Response {
    Done(Details),
    Failed {
        error: Option<String>,
        details: Details,
    },
}

/// What a request produced, whether it failed or not.
#[derive(Debug, Clone, Default)]
pub struct Details {
    pub reload: Option<ReloadRecord>,
    pub status: Option<Status>,
    pub deploy: Option<DeployRecord>,
    /// Set when the request waits behind a deploy or reload in progress.
    pub queued: Option<String>,
}

impl Response {
    pub(super) fn error(message: impl Into<String>) -> Response {
        Response::Failed {
            error: Some(message.into()),
            details: Details::default(),
        }
    }

    /// Done when `ok` (as a record says), else failed with `error`.
    pub(super) fn judged(ok: bool, error: Option<String>, details: Details) -> Response {
        if ok {
            Response::Done(details)
        } else {
            Response::Failed { error, details }
        }
    }
}

/// `Response` as every version has sent it: one object whose `ok` and
/// `error` could disagree. Private: only `Response`'s serde goes through it.
#[derive(Serialize, Deserialize)]
struct ResponseOnWire<'a> {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reload: Option<Cow<'a, ReloadRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Cow<'a, Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deploy: Option<Cow<'a, DeployRecord>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queued: Option<Cow<'a, str>>,
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ok, error, details) = match self {
            Response::Done(details) => (true, None, details),
            Response::Failed { error, details } => (false, error.as_deref(), details),
        };
        ResponseOnWire {
            ok,
            error: error.map(Cow::Borrowed),
            reload: details.reload.as_ref().map(Cow::Borrowed),
            status: details.status.as_ref().map(Cow::Borrowed),
            deploy: details.deploy.as_ref().map(Cow::Borrowed),
            queued: details.queued.as_deref().map(Cow::Borrowed),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Response, D::Error> {
        let wire = ResponseOnWire::deserialize(deserializer)?;
        let details = Details {
            reload: wire.reload.map(Cow::into_owned),
            status: wire.status.map(Cow::into_owned),
            deploy: wire.deploy.map(Cow::into_owned),
            queued: wire.queued.map(Cow::into_owned),
        };
        let error = wire.error.map(Cow::into_owned);
        // `ok` with an `error` is no answer cutover gives (a record that
        // has an error is never ok), but the wire can say it: it is taken
        // as a failure, so that a client never reports success over an
        // error.
        Ok(Response::judged(wire.ok && error.is_none(), error, details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// `Response` as versions before the enum declared it, verbatim: what
    /// a cutover or client of such a version writes and reads.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct PreviousResponse {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reload: Option<ReloadRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<Status>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deploy: Option<DeployRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queued: Option<String>,
    }

    fn reload(error: Option<&str>) -> ReloadRecord {
        ReloadRecord {
            id: 3,
            trigger: "control-socket".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 12.5,
            ok: error.is_none(),
            error: error.map(str::to_string),
            programs: Vec::new(),
        }
    }

    fn deploy(outcome: &str, error: Option<&str>) -> Value {
        json!({
            "time": "2026-01-01T00:00:00Z",
            "trigger": "control-socket",
            "outcome": outcome,
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "previous": null,
            "duration_ms": 40.0,
            "error": error,
        })
    }

    /// Every shape the previous version wrote, and how each reads now.
    fn previous_answers() -> Vec<(Value, bool)> {
        let failed_reload = serde_json::to_value(reload(Some("boom"))).unwrap();
        vec![
            (
                json!({"ok": true, "queued": "queued behind the reload in progress"}),
                true,
            ),
            (json!({"ok": true}), true),
            (
                json!({"ok": true, "reload": serde_json::to_value(reload(None)).unwrap()}),
                true,
            ),
            (
                json!({"ok": false, "error": "boom", "reload": failed_reload}),
                false,
            ),
            (
                json!({"ok": false, "error": "cutover is shutting down"}),
                false,
            ),
            (
                json!({"ok": true, "deploy": deploy("deployed", None), "queued": "queued behind the deploy"}),
                true,
            ),
            // A failed deploy's record may carry no error: its outcome says it.
            (
                json!({"ok": false, "deploy": deploy("redeploy-required", None)}),
                false,
            ),
            (
                json!({"ok": false, "error": "hook", "deploy": deploy("deployed", Some("hook"))}),
                false,
            ),
        ]
    }

    #[test]
    fn answers_of_the_previous_shape_are_read_and_written_back_unchanged() {
        for (previous, done) in previous_answers() {
            let read: Response = serde_json::from_value(previous.clone()).unwrap();
            assert_eq!(matches!(read, Response::Done(_)), done, "{previous}");
            // Written back, it is the very same object.
            assert_eq!(serde_json::to_value(&read).unwrap(), previous);
            // And the previous struct reads what is written now as it did.
            let back: PreviousResponse =
                serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
            assert_eq!(back.ok, done, "{previous}");
            assert_eq!(back.error.as_deref(), previous["error"].as_str());
        }
    }

    #[test]
    fn answers_are_written_in_the_previous_shape() {
        let failed = Response::judged(
            false,
            Some("boom".into()),
            Details {
                reload: Some(reload(Some("boom"))),
                ..Details::default()
            },
        );
        let previous = PreviousResponse {
            ok: false,
            error: Some("boom".into()),
            reload: Some(reload(Some("boom"))),
            ..PreviousResponse::default()
        };
        assert_eq!(
            serde_json::to_string(&failed).unwrap(),
            serde_json::to_string(&previous).unwrap()
        );
        let queued = Response::Done(Details {
            queued: Some("queued behind the reload in progress".into()),
            ..Details::default()
        });
        assert_eq!(
            serde_json::to_string(&queued).unwrap(),
            r#"{"ok":true,"queued":"queued behind the reload in progress"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }

    /// `ok` and an `error` at once: a failure, that keeps what came with it.
    #[test]
    fn an_answer_both_ok_and_failed_is_a_failure() {
        let read: Response = serde_json::from_value(json!({
            "ok": true,
            "error": "half done",
            "reload": serde_json::to_value(reload(None)).unwrap(),
        }))
        .unwrap();
        match read {
            Response::Failed { error, details } => {
                assert_eq!(error.as_deref(), Some("half done"));
                assert!(details.reload.is_some());
            }
            Response::Done(_) => panic!("an error was read as success"),
        }
        assert!(serde_json::from_value::<Response>(json!({"error": "no"})).is_err());
    }
}
