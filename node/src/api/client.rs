//! A minimal client of the control API, used by `formic status` and tests.
//!
//! The API is local and speaks one request per connection, so a plain
//! HTTP/1.1 exchange over a std TcpStream is enough and keeps the CLI free of
//! an HTTP client stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{API_ADDR_FILE, API_TOKEN_FILE, NodeStatus, STATUS_PATH};

/// Largest response accepted from the API.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to a node's control API.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error(
        "no node is running for data directory {0} (start one with `formic node --data-dir {0}`)"
    )]
    NotRunning(PathBuf),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold an address: {reason}")]
    BadAddr { path: PathBuf, reason: String },
    #[error("talking to the node at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node refused the API token (401): is {0} from this node?")]
    Unauthorized(PathBuf),
    #[error("the node answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("the node's answer is not valid")]
    BadResponse(#[source] serde_json::Error),
}

/// Address and token of the node running for `data_dir`.
pub fn endpoint(data_dir: &Path) -> Result<(SocketAddr, String), ApiClientError> {
    let addr_path = data_dir.join(API_ADDR_FILE);
    let addr_text = match std::fs::read_to_string(&addr_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiClientError::NotRunning(data_dir.to_path_buf()));
        }
        Err(source) => {
            return Err(ApiClientError::ReadFile {
                path: addr_path,
                source,
            });
        }
    };
    let addr = addr_text
        .trim()
        .parse()
        .map_err(|e: std::net::AddrParseError| ApiClientError::BadAddr {
            path: addr_path,
            reason: e.to_string(),
        })?;
    let token_path = data_dir.join(API_TOKEN_FILE);
    let token =
        std::fs::read_to_string(&token_path).map_err(|source| ApiClientError::ReadFile {
            path: token_path,
            source,
        })?;
    Ok((addr, token.trim().to_owned()))
}

/// GETs `path` with the bearer token; returns the HTTP status and body.
pub fn get(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
) -> Result<(u16, Vec<u8>), std::io::Error> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, body))
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The status of the node running for `data_dir`.
pub fn status(data_dir: &Path) -> Result<NodeStatus, ApiClientError> {
    let (addr, token) = endpoint(data_dir)?;
    let (code, body) = match get(addr, Some(&token), STATUS_PATH) {
        Ok(r) => r,
        // A stale address file from a node that was killed.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ApiClientError::NotRunning(data_dir.to_path_buf()));
        }
        Err(source) => return Err(ApiClientError::Io { addr, source }),
    };
    match code {
        200 => serde_json::from_slice(&body).map_err(ApiClientError::BadResponse),
        401 => Err(ApiClientError::Unauthorized(data_dir.join(API_TOKEN_FILE))),
        status => Err(ApiClientError::Http {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }),
    }
}
