//! A small QMP client (QEMU Machine Protocol, `docs/interop/qmp-spec.rst`):
//! JSON objects, one per line, over a unix socket. The server greets with
//! `{"QMP": {...}}`; the client must send `qmp_capabilities` before any other
//! command; every command is answered with `{"return": ...}` or
//! `{"error": {"class", "desc"}}`, and asynchronous `{"event": ...}` objects
//! may arrive in between, which we keep for inspection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a command may take to be answered. QEMU answers from its main
/// loop, so even under a busy TCG guest this is milliseconds.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the QMP conversation.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("could not connect to the qmp socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not set a timeout on the qmp socket {path}")]
    Configure {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected qmp greeting: {line}")]
    Greeting { line: String },
    #[error("could not send qmp command {command}")]
    Send {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("could not read the reply to qmp command {command}")]
    Receive {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("qemu closed the qmp socket before answering {command}")]
    Closed { command: String },
    #[error("qmp sent invalid json while answering {command}: {line}")]
    Parse {
        command: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("qmp command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("unexpected qmp reply to {command}: {line}")]
    UnexpectedReply { command: String, line: String },
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_stream(stream, path)
    }

    /// Runs the handshake over an already connected stream.
    pub fn from_stream(stream: UnixStream, path: &Path) -> Result<Self, QmpError> {
        let configure = |source| QmpError::Configure {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(configure)?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(configure)?;
        let writer = stream.try_clone().map_err(configure)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_object("(greeting)")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting {
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Sends one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::Send {
                command: command.to_string(),
                source,
            })?;
        loop {
            let reply = self.read_object(command)?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let field = |name: &str| {
                    error
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::UnexpectedReply {
                command: command.to_string(),
                line: reply.to_string(),
            });
        }
    }

    /// Asynchronous events received so far (`SHUTDOWN`, `POWERDOWN`, ...).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    fn read_object(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Receive {
                command: command.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                command: command.to_string(),
            });
        }
        serde_json::from_str(line.trim()).map_err(|source| QmpError::Parse {
            command: command.to_string(),
            line: line.trim().to_string(),
            source,
        })
    }
}

/// The `send-key` arguments for ctrl-alt-delete.
pub fn ctrl_alt_delete_keys() -> Value {
    json!({
        "keys": [
            { "type": "qcode", "data": "ctrl" },
            { "type": "qcode", "data": "alt" },
            { "type": "qcode", "data": "delete" }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: checks each request line and answers it.
    fn fake_server(
        script: Vec<(&'static str, &'static str)>,
    ) -> (PathBuf, std::thread::JoinHandle<()>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("berth-qmp-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut input = BufReader::new(stream);
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            for (expect, reply) in script {
                let mut line = String::new();
                input.read_line(&mut line).unwrap();
                let got: Value = serde_json::from_str(&line).unwrap();
                let want: Value = serde_json::from_str(expect).unwrap();
                assert_eq!(got, want);
                out.write_all(reply.as_bytes()).unwrap();
            }
        });
        (path, handle)
    }

    const CAPS: (&str, &str) = (r#"{"execute":"qmp_capabilities"}"#, "{\"return\": {}}\r\n");

    #[test]
    fn command_is_acknowledged_across_events() {
        let (path, server) = fake_server(vec![
            CAPS,
            (
                r#"{"execute":"system_powerdown"}"#,
                "{\"timestamp\": {}, \"event\": \"POWERDOWN\"}\r\n{\"return\": {}}\r\n",
            ),
        ]);
        let mut qmp = Qmp::connect(&path).unwrap();
        assert_eq!(qmp.execute("system_powerdown", None).unwrap(), json!({}));
        assert_eq!(qmp.events().len(), 1);
        assert_eq!(qmp.events()[0]["event"], "POWERDOWN");
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn arguments_are_sent_and_errors_reported() {
        let (path, server) = fake_server(vec![
            CAPS,
            (
                r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}"#,
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no keyboard\"}}\r\n",
            ),
        ]);
        let mut qmp = Qmp::connect(&path).unwrap();
        let err = qmp
            .execute("send-key", Some(ctrl_alt_delete_keys()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "qmp command send-key failed: GenericError: no keyboard"
        );
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn closed_socket_and_garbage_are_errors() {
        let (path, server) = fake_server(vec![CAPS]);
        let mut qmp = Qmp::connect(&path).unwrap();
        server.join().unwrap();
        assert!(matches!(
            qmp.execute("quit", None),
            Err(QmpError::Closed { .. } | QmpError::Send { .. })
        ));
        std::fs::remove_file(&path).unwrap();

        let (path, server) =
            fake_server(vec![(r#"{"execute":"qmp_capabilities"}"#, "not json\r\n")]);
        assert!(matches!(Qmp::connect(&path), Err(QmpError::Parse { .. })));
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let path = Path::new("/nonexistent/berth/qmp.sock");
        assert!(matches!(Qmp::connect(path), Err(QmpError::Connect { .. })));
    }
}
