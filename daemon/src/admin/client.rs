//! How the CLI finds a running daemon and calls its admin API, so that `gate config set`,
//! `gate upstream add`, `gate token create`... are live when a daemon runs.
//!
//! Discovery: the daemon of a state directory serves its admin API on
//! `<state_dir>/admin.sock` ([`super::socket`]). That is the only place the CLI looks: a
//! Unix socket in the 0700 state directory can only be made by a process that may write
//! that directory, so the CLI knows it talks to the real daemon before it sends the admin
//! token (`GATE_ADMIN_TOKEN` or `<state_dir>/admin.token`) or a provider key. It never
//! sends either over TCP to whatever holds the daemon's port. A daemon counts as running
//! when it answers `GET /admin/api/status` with 200 there; anything else (no socket, a
//! stale one, a refusal) means "not running" and the CLI works on the files instead.
//!
//! The HTTP client is a minimal blocking HTTP/1.1 client over `std` sockets (one request
//! per connection, bounded response size): the CLI needs no async runtime for this.
//! [`http_request`] (TCP) is kept for tests and tools that talk to the web listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::session::read_admin_token;

/// Largest response the client reads.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Connect timeout when probing for a daemon.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read/write timeout of one request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The file where a running daemon records its TCP listen address (for people and tests;
/// the CLI does not use it).
pub fn addr_file(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.addr")
}

/// An HTTP response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One blocking HTTP/1.1 request to `addr` over TCP (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(stream, &addr.to_string(), method, path, headers, body)
}

/// One blocking HTTP/1.1 request over the Unix socket at `socket` (`Connection: close`).
pub fn http_request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    exchange(stream, "localhost", method, path, headers, body)
}

fn exchange(
    mut stream: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 response")
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..split)?).ok()?;
    let rest = raw.get(split + 4..)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(data.get(..line_end)?).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = data.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A running daemon's admin API, reached through its Unix socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    token: String,
}

impl AdminClient {
    /// The daemon's admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Finds the daemon that owns `state_dir`, if one is running (see the module comment:
    /// only its admin socket is tried).
    pub fn discover(state_dir: &Path) -> Option<AdminClient> {
        let socket = super::socket::socket_path(state_dir);
        if !socket.exists() {
            return None;
        }
        let token = std::env::var("GATE_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| read_admin_token(state_dir))?;
        let client = AdminClient { socket, token };
        match client.call("GET", "status", None) {
            Ok((200, _)) => Some(client),
            Ok((status, _)) => {
                tracing::debug!(status, "the admin socket refused the admin token");
                None
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no daemon on the admin socket");
                None
            }
        }
    }

    /// Calls `/admin/api/<route>`; returns the status and the JSON body.
    pub fn call(&self, method: &str, route: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let bytes = body.map(Value::to_string).unwrap_or_default();
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let response = http_request_unix(
            &self.socket,
            method,
            &format!("/admin/api/{route}"),
            &headers,
            bytes.as_bytes(),
        )
        .with_context(|| format!("calling the daemon on {}", self.socket.display()))?;
        Ok((response.status, response.json()))
    }

    /// Calls the API and turns a non-2xx answer into an error carrying its message.
    pub fn call_ok(&self, method: &str, route: &str, body: Option<&Value>) -> Result<Value> {
        let (status, value) = self.call(method, route, body)?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned();
            anyhow::bail!("{message}")
        }
    }

    /// Calls the API with a typed request body and reads a typed answer.
    pub fn call_typed<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        route: &str,
        body: Option<&Req>,
    ) -> Result<Resp> {
        let body = body.map(serde_json::to_value).transpose()?;
        let value = self.call_ok(method, route, body.as_ref())?;
        serde_json::from_value(value).with_context(|| {
            format!("the daemon's answer to {method} /admin/api/{route} has an unexpected shape")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!(plain.status, 200);
        assert_eq!(plain.body, b"{}");
        let chunked = parse_response(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.status, 400);
        assert_eq!(chunked.body, b"abcde");
        assert!(parse_response(b"garbage").is_none());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_none());
    }
}
