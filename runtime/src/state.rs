//! The runtime-spec container state (`runtime-spec/runtime.md#state`), as
//! `state` prints it and as hooks read it on stdin.
//!
//! The field names and the lower-case status strings are fixed by the spec;
//! `pid` is omitted while there is no process and `annotations` when empty,
//! as runc and crun do.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a container is in its lifecycle (runtime-spec "Lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is running and has not finished.
    Creating,
    /// The environment exists; the user process has not run yet.
    Created,
    /// The user process has been executed and has not exited.
    Running,
    /// The process has exited (or never ran after a failed create).
    Stopped,
}

impl Status {
    /// The spec's string for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one container, serialised exactly as the runtime spec's
/// state JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Version of the runtime spec the state complies with.
    pub oci_version: String,
    /// The container's id, unique on this host.
    pub id: String,
    /// Lifecycle status.
    pub status: Status,
    /// Host pid of the container's process; required by the spec on Linux
    /// while `created` or `running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Absolute path to the bundle directory.
    pub bundle: PathBuf,
    /// The annotations of the container's config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The runtime-spec version this runtime reports in its state.
pub const OCI_VERSION: &str = "1.2.0";

/// Failure to read or write the state JSON.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("serialise state of container {id}")]
    Serialise {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("parse state json")]
    Parse {
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    /// A state in `creating` status with this runtime's spec version.
    pub fn new(id: impl Into<String>, bundle: impl Into<PathBuf>) -> State {
        State {
            oci_version: OCI_VERSION.to_string(),
            id: id.into(),
            status: Status::Creating,
            pid: None,
            bundle: bundle.into(),
            annotations: BTreeMap::new(),
        }
    }

    /// Compact JSON, as written on a hook's stdin.
    pub fn to_json(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(self).map_err(|source| StateError::Serialise {
            id: self.id.clone(),
            source,
        })
    }

    /// Indented JSON, as `runc state` prints it.
    pub fn to_json_pretty(&self) -> Result<String, StateError> {
        serde_json::to_string_pretty(self).map_err(|source| StateError::Serialise {
            id: self.id.clone(),
            source,
        })
    }

    /// Parses a state JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<State, StateError> {
        serde_json::from_slice(bytes).map_err(|source| StateError::Parse { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The example of runtime-spec `runtime.md` ("State"), verbatim.
    const SPEC_EXAMPLE: &str = r#"{
    "ociVersion": "0.2.0",
    "id": "oci-container1",
    "status": "running",
    "pid": 4422,
    "bundle": "/containers/redis",
    "annotations": {
        "myKey": "myValue"
    }
}"#;

    #[test]
    fn parses_the_spec_example() {
        let st = State::from_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(st.oci_version, "0.2.0");
        assert_eq!(st.id, "oci-container1");
        assert_eq!(st.status, Status::Running);
        assert_eq!(st.pid, Some(4422));
        assert_eq!(st.bundle, PathBuf::from("/containers/redis"));
        assert_eq!(
            st.annotations.get("myKey").map(String::as_str),
            Some("myValue")
        );
    }

    #[test]
    fn spec_example_round_trips_to_the_same_json() {
        let st = State::from_json(SPEC_EXAMPLE.as_bytes()).unwrap();
        let back: Value = serde_json::from_slice(&st.to_json().unwrap()).unwrap();
        let orig: Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn pid_and_empty_annotations_are_omitted() {
        let mut st = State::new("c1", "/b");
        st.status = Status::Stopped;
        let json = String::from_utf8(st.to_json().unwrap()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"ociVersion":"{OCI_VERSION}","id":"c1","status":"stopped","bundle":"/b"}}"#
            )
        );
        assert_eq!(State::from_json(json.as_bytes()).unwrap(), st);
    }

    #[test]
    fn every_status_uses_the_spec_string() {
        for (status, text) in [
            (Status::Creating, "creating"),
            (Status::Created, "created"),
            (Status::Running, "running"),
            (Status::Stopped, "stopped"),
        ] {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{text}\"")
            );
            assert_eq!(status.to_string(), text);
            let parsed: Status = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(parsed, status);
        }
    }

    #[test]
    fn created_state_from_literal_json() {
        let literal =
            r#"{"ociVersion":"1.0.2","id":"web","status":"created","pid":17,"bundle":"/run/b"}"#;
        let st = State::from_json(literal.as_bytes()).unwrap();
        assert_eq!(st.status, Status::Created);
        assert_eq!(st.pid, Some(17));
        assert!(st.annotations.is_empty());
        assert_eq!(String::from_utf8(st.to_json().unwrap()).unwrap(), literal);
    }

    #[test]
    fn rejects_unknown_status_and_missing_fields() {
        let bad = r#"{"ociVersion":"1.0.2","id":"x","status":"paused","bundle":"/b"}"#;
        assert!(matches!(
            State::from_json(bad.as_bytes()),
            Err(StateError::Parse { .. })
        ));
        let upper = r#"{"ociVersion":"1.0.2","id":"x","status":"Running","bundle":"/b"}"#;
        assert!(State::from_json(upper.as_bytes()).is_err());
        let no_id = r#"{"ociVersion":"1.0.2","status":"running","bundle":"/b"}"#;
        assert!(State::from_json(no_id.as_bytes()).is_err());
    }
}
