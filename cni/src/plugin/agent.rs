//! The plugin's side of the agent protocol ([`crate::protocol`]): one request line, one
//! response line, over the agent's unix socket, within a deadline.
//!
//! The plugin logic talks to the agent only through [`AgentClient`], so unit tests can put a
//! fake behind it; the real client is [`UnixSocketClient`]. Plain blocking std sockets with
//! per-operation timeouts derived from one deadline: no async runtime in a process that lives
//! for a few milliseconds.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::protocol::{Request, Response};

/// The largest response line accepted (the agent sends a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;

/// Sends one request to the agent and waits for its answer.
pub trait AgentClient {
    fn call(
        &self,
        socket: &Path,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, AgentError>;
}

/// Why the agent could not be asked (as opposed to the agent answering with an error).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("socket does not exist (is the nftpol agent running on this node?)")]
    NoSocket(#[source] io::Error),
    #[error("connection refused (no agent is listening on the socket)")]
    Refused(#[source] io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot send the request: {0}")]
    Send(#[source] io::Error),
    #[error("cannot read the answer: {0}")]
    Receive(#[source] io::Error),
    #[error("the agent closed the connection without answering")]
    Closed,
    #[error("the agent's answer is longer than {MAX_RESPONSE} bytes")]
    TooLong,
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("invalid answer: {0}")]
    InvalidResponse(#[source] serde_json::Error),
}

/// The real client: a blocking unix stream socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnixSocketClient;

impl AgentClient for UnixSocketClient {
    fn call(
        &self,
        socket: &Path,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut line = serde_json::to_vec(request).map_err(AgentError::Encode)?;
        line.push(b'\n');
        // A unix-socket connect does not wait for the peer to accept; it blocks only when the
        // listen backlog is full, which a live agent drains in microseconds.
        let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AgentError::NoSocket(e),
            io::ErrorKind::ConnectionRefused => AgentError::Refused(e),
            _ => AgentError::Connect(e),
        })?;
        stream
            .set_write_timeout(Some(remaining(deadline, timeout)?))
            .map_err(AgentError::Send)?;
        stream.write_all(&line).map_err(|e| {
            if is_timeout(&e) {
                AgentError::Timeout(timeout)
            } else {
                AgentError::Send(e)
            }
        })?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        loop {
            stream
                .set_read_timeout(Some(remaining(deadline, timeout)?))
                .map_err(AgentError::Receive)?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if chunk[..n].contains(&b'\n') {
                        break;
                    }
                    if buf.len() > MAX_RESPONSE {
                        return Err(AgentError::TooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(AgentError::Timeout(timeout)),
                // The agent closed without reading our request (e.g. it is shutting down).
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(AgentError::Closed);
                }
                Err(e) => return Err(AgentError::Receive(e)),
            }
        }
        let line = match buf.iter().position(|&b| b == b'\n') {
            Some(end) => &buf[..end],
            None => &buf[..],
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(AgentError::Closed);
        }
        serde_json::from_slice(line).map_err(AgentError::InvalidResponse)
    }
}

/// Time left before `deadline` (a socket timeout must not be zero).
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, AgentError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left),
        _ => Err(AgentError::Timeout(timeout)),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn socket_path(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        (dir, p)
    }

    #[test]
    fn missing_socket_is_reported_as_such() {
        let (_d, p) = socket_path("none.sock");
        let e = UnixSocketClient
            .call(&p, &Request::Status, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, AgentError::NoSocket(_)), "{e}");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_refused() {
        let (_d, p) = socket_path("dead.sock");
        drop(UnixListener::bind(&p).unwrap()); // the file stays, nobody listens
        let e = UnixSocketClient
            .call(&p, &Request::Status, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, AgentError::Refused(_)), "{e}");
    }

    #[test]
    fn one_line_out_one_line_back() {
        let (_d, p) = socket_path("a.sock");
        let listener = UnixListener::bind(&p).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut w = s;
            w.write_all(b"{\"ok\":false,\"error\":{\"code\":11,\"msg\":\"syncing\"}}\n")
                .unwrap();
            line
        });
        let resp = UnixSocketClient
            .call(&p, &Request::Status, Duration::from_secs(5))
            .unwrap();
        assert_eq!(resp, Response::error(11, "syncing", ""));
        assert_eq!(server.join().unwrap(), "{\"op\":\"status\"}\n");
    }

    #[test]
    fn a_silent_agent_times_out_at_the_deadline() {
        let (_d, p) = socket_path("slow.sock");
        let listener = UnixListener::bind(&p).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let start = Instant::now();
        let e = UnixSocketClient
            .call(&p, &Request::Status, Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, AgentError::Timeout(_)), "{e}");
        assert!(start.elapsed() < Duration::from_millis(700));
        server.join().unwrap();
    }

    #[test]
    fn a_hang_up_without_answer_is_closed() {
        let (_d, p) = socket_path("hup.sock");
        let listener = UnixListener::bind(&p).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            drop(s);
        });
        let e = UnixSocketClient
            .call(&p, &Request::Status, Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(e, AgentError::Closed | AgentError::Send(_)), "{e}");
        server.join().unwrap();
    }
}
