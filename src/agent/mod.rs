//! `nftpol agent`: the node agent. It watches the cluster, keeps this node's table in the
//! kernel equal to what the compiler derives from it, and serves the CNI plugin so that no pod
//! starts before its isolation is committed.
//!
//! # Architecture
//!
//! ```text
//!  API server --watch--> watch (4 kube-runtime watchers) --convert--+
//!                         Pods, NetworkPolicies, Nodes,             |
//!                         Namespaces (metadata only)                |  Input (bounded mpsc)
//!  CNI plugin --unix socket--> cni (server; GETs unknown pods) ---->+-----------> engine thread
//!  kernel --nf_tables notifications--> kernel (monitor thread) --->+             Compiler
//!  SIGTERM/SIGINT --> shutdown --------------------------------------+           AttachmentStore
//!                                                                                Dataplane (netlink)
//!  /metrics /healthz /readyz /loglevel <-- http <-- Metrics, Health <------------'
//! ```
//!
//! - [`watch`]: converts every event at once with one shared [`Converter`] and drops the API
//!   object; the compiler holds the only (trimmed) copy. Rejected NetworkPolicies keep their
//!   last valid version and get an Event ([`events`]).
//! - [`engine`]: the single owner of the compiler, the attachments and the dataplane, on its
//!   own thread (netlink calls block). Readiness gate, first full sync, debounced incremental
//!   syncs, full resyncs after failures, periodically and when the table was tampered with.
//!   See its docs for the exact rules.
//! - [`cni`]: the plugin protocol's server; ADD answers only after the kernel committed.
//! - [`attachments`]: CNI attachments persisted in the state directory (anti-spoofing and
//!   plugin-reported IPs survive agent restarts).
//! - [`kernel`]: nf_tables netlink notifications, to restore a table someone deleted or
//!   altered within milliseconds (polling is the fallback).
//! - [`metrics`], [`health`], [`http`], [`telemetry`]: observability, with bounded labels.
//!
//! Fail-static: nothing is programmed before all caches synced, and shutdown leaves the table
//! in place, so a restarting or crashing agent never opens the node up.
//!
//! # Flags (each also from the environment)
//!
//! | flag | env | default | |
//! |---|---|---|---|
//! | `--node-name` | `NODE_NAME` | required | the node whose pods are enforced |
//! | `--kubeconfig` | `KUBECONFIG` | in-cluster or `~/.kube/config` | a `:`-separated list is merged as kubectl does |
//! | `--table` | `NFTPOL_TABLE` | `nftpol` | the `inet` table nftpol owns |
//! | `--socket` | `NFTPOL_SOCKET` | `/run/nftpol/nftpol.sock` | CNI socket |
//! | `--state-dir` | `NFTPOL_STATE_DIR` | `/run/nftpol` | `attachments.json`, `metrics-addr` |
//! | `--metrics-addr` | `NFTPOL_METRICS_ADDR` | `0.0.0.0:9464` | port 0 picks a free port (written to `<state-dir>/metrics-addr`) |
//! | `--log-level` | `NFTPOL_LOG_LEVEL` | `info` | a tracing filter; changeable at runtime with `PUT /loglevel` |
//! | `--log-format` | `NFTPOL_LOG_FORMAT` | `text` | `text` or `json` |
//! | `--resync-interval` | `NFTPOL_RESYNC_INTERVAL` | `5m` | full reconcile against the kernel |
//! | `--debounce` | `NFTPOL_DEBOUNCE` | `20ms` | quiet time after a change before syncing |
//! | `--debounce-max` | `NFTPOL_DEBOUNCE_MAX` | `250ms` | longest a change waits during a burst |
//! | `--kernel-watch` | `NFTPOL_KERNEL_WATCH` | `notify` | `notify` (nf_tables notifications), `poll`, `off` |
//! | `--kernel-poll-interval` | `NFTPOL_KERNEL_POLL_INTERVAL` | `2s` | dump-and-compare period when polling |
//! | `--cni-ready-timeout` | `NFTPOL_CNI_READY_TIMEOUT` | `8s` | how long ADD waits for readiness before error 11 (below the plugin's 10 s default) |
//! | `--api-timeout` | `NFTPOL_API_TIMEOUT` | `5s` | the GET of an unknown pod on ADD |
//!
//! Durations are Go-style (`300ms`, `5m`, `1h30m`).

pub mod attachments;
pub mod cni;
pub mod cni_config;
pub mod engine;
pub mod events;
pub mod health;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod telemetry;
pub mod watch;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::convert::Converter;
use crate::dataplane::{Dataplane, Netlink};
use attachments::{AttachmentStore, KernelLinks, Links, StateError};
use cni::{CniContext, CniServer, PodFetcher};
use engine::{DataplaneFactory, EngineConfig, EngineHandle, EngineParts, Input, KernelWatch};
use health::Health;
use http::{HttpServer, HttpState};
use metrics::Metrics;
use telemetry::LogControl;

/// File in the state directory holding the bound metrics address (`ip:port` and a newline).
pub const METRICS_ADDR_FILE: &str = "metrics-addr";

/// Everything `nftpol agent` is configured with (see the module docs for the flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    pub table: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_addr: SocketAddr,
    pub resync_interval: Duration,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub kernel_watch: KernelWatch,
    pub kernel_poll_interval: Duration,
    pub cni_ready_timeout: Duration,
    pub api_timeout: Duration,
    /// Keep the plugin chained in the host's CNI config (off when `None`).
    pub cni_config: Option<cni_config::CniConfigGuard>,
}

impl AgentConfig {
    /// Defaults for everything but the node and the paths.
    pub fn new(node: impl Into<String>, state_dir: impl Into<PathBuf>) -> AgentConfig {
        let state_dir = state_dir.into();
        AgentConfig {
            node: node.into(),
            kubeconfig: None,
            table: crate::core::compile::DEFAULT_TABLE.to_string(),
            socket: state_dir.join("nftpol.sock"),
            state_dir,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 9464)),
            resync_interval: Duration::from_secs(300),
            debounce: Duration::from_millis(20),
            debounce_max: Duration::from_millis(250),
            kernel_watch: KernelWatch::Notify,
            kernel_poll_interval: Duration::from_secs(2),
            cni_ready_timeout: Duration::from_secs(8),
            api_timeout: Duration::from_secs(5),
            cni_config: None,
        }
    }

    fn engine(&self) -> EngineConfig {
        EngineConfig {
            node: self.node.clone(),
            table: self.table.clone(),
            debounce: self.debounce,
            debounce_max: self.debounce_max,
            resync_interval: self.resync_interval,
            kernel_watch: self.kernel_watch,
            kernel_poll_interval: self.kernel_poll_interval,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster, no kubeconfig): {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Cni(#[from] cni::CniError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// The agent's connections to the world, replaceable in tests.
pub struct AgentParts {
    pub client: kube::Client,
    pub dataplane: DataplaneFactory,
    pub links: Box<dyn Links>,
}

impl AgentParts {
    /// The real thing: netlink in the agent's network namespace.
    pub fn real(client: kube::Client) -> AgentParts {
        AgentParts {
            client,
            dataplane: Box::new(|| Netlink::new().map(|n| Box::new(n) as Box<dyn Dataplane>)),
            links: Box::new(KernelLinks),
        }
    }
}

/// A running agent.
pub struct Agent {
    cancel: CancellationToken,
    engine: Option<EngineHandle>,
    engine_tx: mpsc::Sender<Input>,
    watchers: Vec<JoinHandle<()>>,
    cni: Option<JoinHandle<()>>,
    cni_config: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    metrics_addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Agent {
    /// Starts every part; returns once the sockets are bound (not when ready).
    pub async fn start(
        cfg: AgentConfig,
        parts: AgentParts,
        log: Option<LogControl>,
    ) -> Result<Agent, AgentError> {
        create_dir(&cfg.state_dir)?;
        let store = load_store(&cfg.state_dir)?;
        let metrics = Arc::new(Metrics::new());
        let stale_after = cfg.resync_interval * 2 + Duration::from_secs(60);
        let health = Arc::new(Health::new(stale_after, metrics.clone()));
        let cancel = CancellationToken::new();

        let http_server = HttpServer::bind(cfg.metrics_addr).await?;
        let metrics_addr = http_server.local_addr();
        write_atomically(
            &cfg.state_dir.join(METRICS_ADDR_FILE),
            format!("{metrics_addr}\n").as_bytes(),
        )
        .map_err(|source| AgentError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
        tracing::info!(addr = %metrics_addr, "serving /metrics, /healthz and /readyz");
        let http = tokio::spawn(http_server.serve(
            HttpState {
                metrics: metrics.clone(),
                health: health.clone(),
                log,
            },
            cancel.clone(),
        ));

        let engine = engine::spawn(
            cfg.engine(),
            EngineParts {
                dataplane: parts.dataplane,
                links: parts.links,
                store,
                metrics: metrics.clone(),
                health: health.clone(),
            },
        )?;
        let engine_tx = engine.sender();
        let converter = Arc::new(Mutex::new(Converter::new()));

        let cni_server = CniServer::bind(&cfg.socket)?;
        let cni = tokio::spawn(cni_server.serve(
            CniContext {
                engine: engine_tx.clone(),
                health: health.clone(),
                metrics: metrics.clone(),
                pods: Some(PodFetcher {
                    client: parts.client.clone(),
                    converter: converter.clone(),
                    timeout: cfg.api_timeout,
                }),
                ready_timeout: cfg.cni_ready_timeout,
            },
            cancel.clone(),
        ));

        let cni_config = cfg
            .cni_config
            .clone()
            .map(|guard| tokio::spawn(guard.run(metrics.clone(), cancel.clone())));

        let watchers = watch::spawn(watch::WatchContext {
            client: parts.client.clone(),
            converter,
            engine: engine_tx.clone(),
            metrics: metrics.clone(),
            events: events::EventReporter::new(parts.client, &cfg.node, metrics.clone()),
        });

        Ok(Agent {
            cancel,
            engine: Some(engine),
            engine_tx,
            watchers,
            cni: Some(cni),
            cni_config,
            http: Some(http),
            metrics_addr,
            metrics,
            health,
        })
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The engine's input channel (tests inject events through it).
    pub fn engine(&self) -> mpsc::Sender<Input> {
        self.engine_tx.clone()
    }

    /// Stops accepting CNI requests (answering those in flight), stops the watchers and the
    /// engine, and leaves the table in the kernel.
    pub async fn shutdown(mut self) -> Result<(), AgentError> {
        tracing::info!("shutting down; the table stays in the kernel");
        self.cancel.cancel();
        if let Some(cni) = self.cni.take() {
            let _ = cni.await;
        }
        if let Some(guard) = self.cni_config.take() {
            let _ = guard.await;
        }
        for w in self.watchers.drain(..) {
            w.abort();
        }
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await?;
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
        for w in &self.watchers {
            w.abort();
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    log: Option<LogControl>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let client = kube_client(cfg.kubeconfig.as_deref()).await?;
    let agent = Agent::start(cfg, AgentParts::real(client), log).await?;
    shutdown.await;
    agent.shutdown().await
}

/// A client from a kubeconfig (a `:`-separated list is merged like kubectl does) or, without
/// one, kube's inference (in-cluster service account, then `~/.kube/config`).
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, AgentError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let config = match kubeconfig {
        Some(paths) => {
            let text = paths.to_string_lossy().to_string();
            let mut merged: Option<Kubeconfig> = None;
            for p in text.split(':').filter(|p| !p.is_empty()) {
                let kc = Kubeconfig::read_from(p).map_err(|source| AgentError::Kubeconfig {
                    path: p.to_string(),
                    source,
                })?;
                merged = Some(match merged {
                    None => kc,
                    Some(m) => m.merge(kc).map_err(|source| AgentError::Kubeconfig {
                        path: p.to_string(),
                        source,
                    })?,
                });
            }
            let kc = merged.unwrap_or_default();
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| AgentError::Kubeconfig {
                    path: text.clone(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(AgentError::InferConfig)?,
    };
    kube::Client::try_from(config).map_err(AgentError::Client)
}

fn create_dir(dir: &Path) -> Result<(), AgentError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| AgentError::StateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Loads the attachment list; a corrupt file is moved aside (the agent must still start).
fn load_store(dir: &Path) -> Result<AttachmentStore, AgentError> {
    match AttachmentStore::load(dir) {
        Ok(s) => Ok(s),
        Err(e @ (StateError::Parse { .. } | StateError::Version { .. })) => {
            let path = dir.join(attachments::STATE_FILE);
            let aside = dir.join(format!("{}.corrupt", attachments::STATE_FILE));
            tracing::error!(
                error = %e,
                moved_to = %aside.display(),
                "ignoring the unreadable attachment list; pods keep their table entries but \
                 lose anti-spoofing until their next CNI ADD"
            );
            std::fs::rename(&path, &aside).map_err(|source| AgentError::StateDir {
                path: path.clone(),
                source,
            })?;
            Ok(AttachmentStore::load(dir)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Parses a Go-style duration: a sequence of decimal numbers with units `ns`, `us` (`µs`),
/// `ms`, `s`, `m`, `h` (`300ms`, `1.5s`, `1h30m`), or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: bad number {num:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (e.g. 20ms, 5m)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
                ));
            }
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5 min").is_err());
        assert!(parse_duration("").is_err());
    }
}
