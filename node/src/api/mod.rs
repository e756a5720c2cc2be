//! The local control API: HTTP/JSON on 127.0.0.1, for `formic status` and
//! other local tools.
//!
//! On start the server writes its address to `<data-dir>/api.addr` and a
//! fresh random bearer token to `<data-dir>/api.token` (mode 0600), so only
//! the user who owns the data directory can talk to the node; requests
//! without that token get 401. Both files are removed on a clean shutdown.

pub mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;

use crate::network::NetworkClient;

/// File holding the API's `ip:port`.
pub const API_ADDR_FILE: &str = "api.addr";
/// File holding the bearer token (0600).
pub const API_TOKEN_FILE: &str = "api.token";
/// Path of the status endpoint.
pub const STATUS_PATH: &str = "/v1/status";

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the control API must listen on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot bind the control API to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for the API token: {0}")]
    Random(String),
}

#[derive(Clone)]
struct AppState {
    client: NetworkClient,
    token: String,
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    files: Vec<PathBuf>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and removes the address and token files, so `formic
    /// status` says plainly that no node runs.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the API on `addr` (loopback only) for the node in `data_dir`.
pub async fn serve(
    client: NetworkClient,
    data_dir: &Path,
    addr: SocketAddr,
) -> Result<ApiServer, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiError::Bind { addr, source })?;
    let token = new_token()?;
    let token_path = data_dir.join(API_TOKEN_FILE);
    let addr_path = data_dir.join(API_ADDR_FILE);
    // The token first: a reader that finds the address always finds the
    // matching token.
    crate::data_dir::write_atomic(&token_path, token.as_bytes(), true).map_err(|source| {
        ApiError::WriteFile {
            path: token_path.clone(),
            source,
        }
    })?;
    crate::data_dir::write_atomic(&addr_path, addr.to_string().as_bytes(), false).map_err(
        |source| ApiError::WriteFile {
            path: addr_path.clone(),
            source,
        },
    )?;

    let state = AppState { client, token };
    let app = Router::new()
        .route(STATUS_PATH, get(status))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "control API stopped with an error");
        }
    });
    tracing::info!(%addr, "control API listening");
    Ok(ApiServer {
        addr,
        files: vec![addr_path, token_path],
        stop,
        task,
    })
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if same_secret(t.trim().as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "missing or wrong bearer token"})),
        )
            .into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    match state.client.status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
