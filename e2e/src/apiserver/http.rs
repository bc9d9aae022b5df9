//! Just enough HTTP/1.1 for kube-rs (hyper) as a client: one request at a time per
//! connection, keep-alive, `Content-Length` or chunked request bodies, and responses with a
//! `Content-Length` or chunked (watch streams).
//!
//! Hand-written on std so the test API server needs no async runtime and every byte on the
//! wire is under the test's control (a watch stream can be ended cleanly or cut mid-stream).

use std::io::{self, BufRead, Read, Write};

/// Largest request head (request line + headers) we accept.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body we accept.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// Errors reading a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request body of {size} bytes is larger than {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Percent-encoded path, without the query.
    pub(crate) path: String,
    /// Decoded query parameters, in order.
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Whether the connection must be closed after the response.
    pub(crate) close: bool,
}

impl Request {
    /// First header with this (case-insensitive) name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Last value of a query parameter.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request; `Ok(None)` when the peer closed the connection between requests.
pub(crate) fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>, HttpError> {
    let mut head_len = 0;
    let mut line = String::new();
    // Request line (tolerate empty lines before it, RFC 9112 2.2).
    let request_line = loop {
        line.clear();
        let n = read_line(reader, &mut line, &mut head_len)?;
        if n == 0 {
            return Ok(None);
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if !trimmed.is_empty() {
            break trimmed.to_string();
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!(
            "request line {request_line:?}"
        )));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("version {version:?}")));
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        if read_line(reader, &mut line, &mut head_len)? == 0 {
            return Err(HttpError::Malformed(
                "connection closed inside the headers".into(),
            ));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line {trimmed:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(HttpError::TooLarge {
                size: len,
                limit: MAX_BODY,
            });
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };
    let connection = header("connection").map(str::to_ascii_lowercase);
    let close = version == "HTTP/1.0" && connection.as_deref() != Some("keep-alive")
        || connection.as_deref() == Some("close");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, parse_query(q)),
        None => (target, Vec::new()),
    };
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers,
        body,
        close,
    }))
}

fn read_line(
    reader: &mut impl BufRead,
    line: &mut String,
    head_len: &mut usize,
) -> Result<usize, HttpError> {
    let n = reader
        .by_ref()
        .take((MAX_HEAD - *head_len + 1) as u64)
        .read_line(line)?;
    *head_len += n;
    if *head_len > MAX_HEAD {
        return Err(HttpError::Malformed(format!(
            "request head larger than {MAX_HEAD} bytes"
        )));
    }
    Ok(n)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    let mut line = String::new();
    let mut head_len = 0;
    loop {
        line.clear();
        read_line(reader, &mut line, &mut head_len)?;
        let size_text = line.trim_end_matches(['\r', '\n']);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                line.clear();
                if read_line(reader, &mut line, &mut head_len)? == 0
                    || line.trim_end_matches(['\r', '\n']).is_empty()
                {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(HttpError::TooLarge {
                size: body.len() + size,
                limit: MAX_BODY,
            });
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` query text.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Percent-decoding (`+` is a space in query text when `plus_is_space`).
pub(crate) fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && hex.iter().all(u8::is_ascii_hexdigit)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(decoded) = u8::from_str_radix(hex, 16)
        {
            out.push(decoded);
            i += 3;
            continue;
        }
        out.push(if byte == b'+' && plus_is_space {
            b' '
        } else {
            byte
        });
        i += 1;
    }
    // Malformed escapes stay literal.
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes a complete response with a `Content-Length`.
pub(crate) fn write_response(
    out: &mut impl Write,
    code: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n{}\r\n",
        reason_phrase(code),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Starts a chunked response (a watch stream).
pub(crate) fn start_chunked(out: &mut impl Write, code: u16, content_type: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n",
        reason_phrase(code),
    );
    out.write_all(head.as_bytes())?;
    out.flush()
}

/// Writes one chunk in one write (nothing for empty data: an empty chunk would end the body).
pub(crate) fn write_chunk(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut chunk = Vec::with_capacity(data.len() + 20);
    chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    out.write_all(&chunk)?;
    out.flush()
}

/// Ends a chunked body cleanly.
pub(crate) fn finish_chunked(out: &mut impl Write) -> io::Result<()> {
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn parses_a_request_with_query_and_chunked_body() {
        let raw = b"POST /api/v1/namespaces/a/pods?fieldSelector=spec.nodeName%3Dn1&labelSelector=app+in+(a%2Cb) HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        let req = read_request(&mut reader)
            .expect("parse")
            .expect("a request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/v1/namespaces/a/pods");
        assert_eq!(req.param("fieldSelector"), Some("spec.nodeName=n1"));
        assert_eq!(req.param("labelSelector"), Some("app in (a,b)"));
        assert_eq!(req.body, b"{\"a\":1}");
        assert!(!req.close);
        assert!(read_request(&mut reader).expect("eof").is_none());
    }

    #[test]
    fn malformed_escapes_stay_literal() {
        assert_eq!(percent_decode("a%2", false), "a%2");
        assert_eq!(percent_decode("100%zz", false), "100%zz");
        assert_eq!(percent_decode("%2Fx", false), "/x");
        assert_eq!(percent_decode("%+1", false), "%+1");
    }

    #[test]
    fn content_length_over_the_limit_is_refused() {
        let raw = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        let mut reader = BufReader::new(raw.as_bytes());
        assert!(matches!(
            read_request(&mut reader),
            Err(HttpError::TooLarge { .. })
        ));
    }
}
