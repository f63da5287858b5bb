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
    #[error("could not duplicate the qmp socket")]
    Duplicate {
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

    /// A second handle on this session's socket, for another thread (see
    /// [`QmpControl`]).
    pub fn control(&self) -> Result<QmpControl, QmpError> {
        let stream = self
            .writer
            .try_clone()
            .map_err(|source| QmpError::Duplicate { source })?;
        Ok(QmpControl { stream })
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

/// A second handle on a session's socket. A thread can send a command
/// through it while another waits on the session for a reply that may
/// never come (QEMU answers from its main loop; when that is stuck, so is
/// every command): `quit` needs no reply, QEMU's exit says it was heard.
/// The reply, if any, goes to whoever reads the session next. Shutting the
/// socket down ends every wait on the session at once.
#[derive(Debug)]
pub struct QmpControl {
    stream: UnixStream,
}

impl QmpControl {
    /// Sends `command` without arguments and without reading its reply,
    /// giving up after `timeout` if the socket's buffer stays full (a
    /// monitor that reads nothing). The timeout is the socket's and stays
    /// set: the session's own sends are held to it too from then on.
    pub fn send(&self, command: &str, timeout: Duration) -> Result<(), QmpError> {
        let send_error = |source| QmpError::Send {
            command: command.to_string(),
            source,
        };
        // A zero timeout would mean none at all (setsockopt(SO_SNDTIMEO)).
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(send_error)?;
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        // One write of a short line: on a stream socket it is not split
        // around another thread's command.
        (&self.stream)
            .write_all(line.as_bytes())
            .map_err(send_error)
    }

    /// Shuts the socket down both ways: a read on the session ends
    /// ([`QmpError::Closed`]), and so does every later command.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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

    /// A command waits for a reply that never comes (a stuck monitor);
    /// meanwhile another thread sends `quit` through the control handle,
    /// and ends the wait by shutting the socket down.
    #[test]
    fn a_control_handle_sends_past_a_command_in_flight_and_ends_its_wait() {
        let path = std::env::temp_dir().join(format!("berth-qmp-{}-ctl.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        // Answers the negotiation, then reads and answers nothing; keeps
        // the connection open until the test is done.
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut input = BufReader::new(stream);
            out.write_all(b"{\"QMP\": {}}\r\n").unwrap();
            let mut line = String::new();
            input.read_line(&mut line).unwrap();
            out.write_all(b"{\"return\": {}}\r\n").unwrap();
            for _ in 0..2 {
                line.clear();
                input.read_line(&mut line).unwrap();
                read_tx.send(line.trim().to_string()).unwrap();
            }
            let _ = end_rx.recv();
        });
        let mut qmp = Qmp::connect(&path).unwrap();
        let control = qmp.control().unwrap();
        let waiting = std::thread::spawn(move || qmp.execute("system_powerdown", None));
        let wait = Duration::from_secs(10);
        assert_eq!(
            read_rx.recv_timeout(wait).unwrap(),
            r#"{"execute":"system_powerdown"}"#
        );
        control.send("quit", Duration::from_secs(5)).unwrap();
        assert_eq!(read_rx.recv_timeout(wait).unwrap(), r#"{"execute":"quit"}"#);
        assert!(!waiting.is_finished());
        control.shutdown();
        // Within seconds, not the 30 s reply timeout.
        let started = std::time::Instant::now();
        let result = waiting.join().unwrap();
        assert!(matches!(result, Err(QmpError::Closed { .. })), "{result:?}");
        assert!(started.elapsed() < wait);
        drop(end_tx);
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let path = Path::new("/nonexistent/berth/qmp.sock");
        assert!(matches!(Qmp::connect(path), Err(QmpError::Connect { .. })));
    }
}
