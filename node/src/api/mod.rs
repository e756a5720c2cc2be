//! The local control API: HTTP/JSON on 127.0.0.1, for `formic status` and
//! other local tools.
//!
//! `GET /v1/status` answers a [`NodeStatus`]: the network's status (its keys
//! at the top level, unchanged since the first version) plus, where this
//! process runs them, the idle governor's decision, the running units with
//! their fuel, and per-project progress and credit. The composition root
//! (`crate::node`) starts the API last, with everything it reports passed
//! in an [`ApiContext`]; keys are only ever added, never renamed, because
//! scripts read `formic status --json`.
//!
//! On start the server writes its address to `<data-dir>/api.addr` and a
//! fresh random bearer token to `<data-dir>/api.token` (mode 0600), so only
//! the user who owns the data directory can talk to the node; requests
//! without that token get 401. Both files are removed on a clean shutdown.

pub mod client;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::computing::ComputeStatus;
use crate::error_report::Chain;
use crate::governor::{GovernorSnapshot, RunningUnit, UnitSet};
use crate::network::{NetworkClient, NetworkStatus};

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
    #[error("no randomness for the API token")]
    Random(#[source] getrandom::Error),
}

/// What `GET /v1/status` answers and `formic status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The network's fields, at the top level as in the first version.
    #[serde(flatten)]
    pub network: NetworkStatus,
    /// The idle governor's decision; absent where no governor runs
    /// (`formic publish`, `formic results`, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<GovernorSnapshot>,
    /// Units running now, oldest first, with fuel used and fuel budget.
    #[serde(default)]
    pub running_units: Vec<RunningUnit>,
    /// The computing layer's counters and per-project progress and credit;
    /// absent where no computing layer runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSummary>,
}

/// The computing layer, as the API reports it (a copy of
/// [`ComputeStatus`], kept separate so the JSON contract does not follow
/// internal changes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeSummary {
    /// Units running on this node now.
    pub running: usize,
    /// Units this node has finished computing since it started.
    pub computed: u64,
    /// Units that failed here (traps, limits).
    pub failed: u64,
    /// CPU time this node's finished unit runs took since it started
    /// (failed runs included), in milliseconds; absent where the platform
    /// cannot measure a thread's CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    pub projects: Vec<ProjectCredit>,
}

/// One followed project's progress and this node's credit in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectCredit {
    /// The full ProjectId.
    pub project: String,
    pub name: String,
    pub units: usize,
    /// Units with a validated result.
    pub validated: usize,
    /// Units of this project running here now.
    pub running: usize,
    /// Units of this project computed here.
    pub computed_here: u64,
    /// Credit: the fuel of this node's results that were validated.
    pub credit_fuel: u64,
}

impl From<&ComputeStatus> for ComputeSummary {
    fn from(c: &ComputeStatus) -> Self {
        ComputeSummary {
            running: c.running,
            computed: c.computed,
            failed: c.failed,
            cpu_ms: c.cpu_ms,
            projects: c
                .projects
                .iter()
                .map(|p| ProjectCredit {
                    project: p.project.clone(),
                    name: p.name.clone(),
                    units: p.units,
                    validated: p.validated,
                    running: p.running,
                    computed_here: p.computed_here,
                    credit_fuel: p.credit_fuel,
                })
                .collect(),
        }
    }
}

/// Everything the API serves and reports, passed in by the composition
/// root once the parts it reports on run.
#[derive(Clone)]
pub struct ApiContext {
    /// The network, whose status is the top level of [`NodeStatus`].
    pub client: NetworkClient,
    /// Where `api.addr` and `api.token` are written.
    pub data_dir: PathBuf,
    /// Where to listen (loopback only; port 0 picks one).
    pub addr: SocketAddr,
    /// The idle governor's decisions, where a governor runs.
    pub governor: Option<watch::Receiver<GovernorSnapshot>>,
    /// The units running under the governor, where one runs.
    pub units: Option<UnitSet>,
    /// The computing layer's status, where one runs.
    pub compute: Option<watch::Receiver<ComputeStatus>>,
}

impl std::fmt::Debug for ApiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiContext")
            .field("data_dir", &self.data_dir)
            .field("addr", &self.addr)
            .field("governor", &self.governor.is_some())
            .field("units", &self.units.is_some())
            .field("compute", &self.compute.is_some())
            .finish_non_exhaustive()
    }
}

/// The parts of the status beyond the network.
#[derive(Clone)]
struct Sources {
    governor: Option<watch::Receiver<GovernorSnapshot>>,
    units: Option<UnitSet>,
    compute: Option<watch::Receiver<ComputeStatus>>,
}

impl Sources {
    /// The status of `network` with the other parts that run.
    fn status(&self, network: NetworkStatus) -> NodeStatus {
        NodeStatus {
            network,
            governor: self.governor.as_ref().map(|rx| rx.borrow().clone()),
            running_units: self
                .units
                .as_ref()
                .map(UnitSet::running)
                .unwrap_or_default(),
            compute: self
                .compute
                .as_ref()
                .map(|rx| ComputeSummary::from(&*rx.borrow())),
        }
    }
}

#[derive(Clone)]
struct AppState {
    client: NetworkClient,
    sources: Sources,
    token: String,
}

/// A running API server.
#[derive(Debug)]
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
    getrandom::fill(&mut bytes).map_err(ApiError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the API on `context.addr` (loopback only) for the node in
/// `context.data_dir`; its status reports the network and whichever of the
/// governor, running units and computing layer the context holds.
pub async fn serve(context: ApiContext) -> Result<ApiServer, ApiError> {
    let ApiContext {
        client,
        data_dir,
        addr,
        governor,
        units,
        compute,
    } = context;
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

    let state = AppState {
        client,
        sources: Sources {
            governor,
            units,
            compute,
        },
        token,
    };
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
            tracing::warn!(error = %Chain(&e), "control API stopped with an error");
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
        Ok(s) => axum::Json(state.sources.status(s)).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
