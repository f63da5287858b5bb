//! Talking to the appliance through its forwarded ports.
//!
//! With user networking QEMU itself accepts on the host side of a forward,
//! so a TCP connect succeeds even before anything listens in the guest; the
//! connection is then closed without data. Readiness therefore means "a
//! whole reply came back", and [`http_get`] retries until one does.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Errors of requests through a forwarded port.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no http reply from 127.0.0.1:{port}{path} within {timeout:?} (last attempt: {last})")]
    NoReply {
        port: u16,
        path: String,
        timeout: Duration,
        last: String,
    },
}

/// `GET path` (HTTP/1.0) on 127.0.0.1:`port`, retried every 200 ms until a
/// reply starting with `HTTP/1.` arrives; returns the whole reply, headers
/// included.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<String, NetError> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let last = match get_once(port, path) {
            Ok(reply) if reply.starts_with("HTTP/1.") => return Ok(reply),
            Ok(reply) if reply.is_empty() => "connection closed without a reply".to_string(),
            Ok(reply) => format!(
                "not an http reply: {:?}",
                reply.chars().take(80).collect::<String>()
            ),
            Err(err) => err.to_string(),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(NetError::NoReply {
                port,
                path: path.to_string(),
                timeout,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_once(port: u16, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn retries_until_a_reply_comes() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // First connection: closed without data, like a forward whose
            // guest side is not listening yet.
            drop(listener.accept().unwrap());
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /x HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nbody").unwrap();
        });
        let reply = http_get(port, "/x", Duration::from_secs(30)).unwrap();
        assert!(reply.ends_with("body"), "{reply}");
        server.join().unwrap();
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let port = crate::free_port().unwrap();
        let err = http_get(port, "/", Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("no http reply"), "{err}");
    }
}
