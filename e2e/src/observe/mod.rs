//! Watching a running node agent from the outside, for benchmarks and end-to-end tests.
//!
//! A figure such as "policy change to enforcement" must be measured where users see the
//! effect (the kernel), not where the agent believes it happened, and the agent's own numbers
//! (its `/metrics`, its memory) must be read the way an operator reads them. This module
//! holds the probes for that, none of which uses the agent's code:
//!
//! - [`nft_events`]: a subscriber to nf_tables netlink notifications in a network namespace,
//!   which timestamps every commit and decodes what it changed (set elements with their keys,
//!   chains, sets, rules), so a benchmark can tell the moment a given element reaches the
//!   kernel;
//! - [`prom`]: histograms from the Prometheus text format, with differences and quantiles;
//! - [`procfs`]: resident memory of a process (`VmRSS`, `VmHWM`, anonymous vs file pages);
//! - [`http_get`]: a tiny HTTP/1.1 client for `/metrics` and `/readyz`.

pub mod nft_events;
pub mod procfs;
pub mod prom;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response of [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr` with `Connection: close`; the whole body is read. The socket is
/// created in the calling thread's network namespace.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("HTTP response without a header end"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("HTTP response without a status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("malformed chunked body"))?
    } else {
        body.to_string()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, tail) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(tail.get(..size)?);
        rest = tail.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_responses_are_read() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready";
        assert_eq!(
            parse_response(plain).unwrap(),
            HttpResponse {
                status: 503,
                body: "not ready".into()
            }
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\ncd\r\n3\r\nefg\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, "ab\ncdefg");
        assert!(parse_response(b"garbage").is_err());
    }
}
