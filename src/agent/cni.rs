//! The server side of the CNI plugin's protocol ([`nftpol_cni::protocol`]): one JSON request
//! line and one JSON response line per connection on a unix socket.
//!
//! The socket is created as `<path>.<pid>.tmp`, restricted to its owner (0600: the plugin runs
//! as root, like the container runtime that executes it) and renamed over `<path>`, so a stale
//! socket of an earlier agent is replaced atomically and no client ever sees a half-set-up
//! one. The directory is created (0750) if missing. On shutdown the server stops accepting
//! and removes the socket if it is still its own; connections in flight get their answer.
//!
//! Dispatch:
//! - ADD waits (up to `ready_timeout`) until the first full sync, then goes to the engine,
//!   which commits and applies at once and answers only after the kernel committed. When the
//!   watch has not delivered the pod yet, the engine asks for it and this server GETs it from
//!   the API server. Transient problems answer CNI error 11 (try again later).
//! - DEL, CHECK and GC go to the engine; DEL always succeeds.
//! - STATUS is answered from [`Health`] without waiting.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::api::Api;
use nftpol_cni::protocol::{Attachment, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{AddReply, CNI_NOT_AVAILABLE, CNI_TRY_AGAIN, CniCall, Input};
use super::health::Health;
use super::metrics::{CniOp, CniResult, Metrics};
use crate::core::cluster::Pod;
use crate::core::convert::Converter;

/// CNI error code: the request could not be decoded.
pub const CNI_DECODE_FAILURE: u32 = 6;

/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 1 << 20;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections in flight may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("creating the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Fetches pods the watch has not delivered yet.
#[derive(Clone)]
pub struct PodFetcher {
    pub client: kube::Client,
    pub converter: Arc<Mutex<Converter>>,
    pub timeout: Duration,
}

/// What request handlers need.
#[derive(Clone)]
pub struct CniContext {
    pub engine: mpsc::Sender<Input>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// `None`: unknown pods are answered with "try again later".
    pub pods: Option<PodFetcher>,
    /// How long ADD waits for the agent to become ready.
    pub ready_timeout: Duration,
}

/// A bound socket, ready to serve.
#[derive(Debug)]
pub struct CniServer {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl CniServer {
    /// Creates the socket at `path` (see the module docs). Needs a tokio runtime.
    pub fn bind(path: &Path) -> Result<CniServer, CniError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| CniError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(
                |source| CniError::Dir {
                    path: dir.to_path_buf(),
                    source,
                },
            )?;
        }
        if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
            tracing::warn!(
                socket = %path.display(),
                "another process is listening on the CNI socket; taking it over"
            );
        }
        let berr = |source| CniError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(berr)?;
        let setup = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)?;
            std::fs::metadata(path).map(|m| m.ino())
        })();
        let inode = match setup {
            Ok(i) => i,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(berr(e));
            }
        };
        tracing::info!(socket = %path.display(), "CNI server listening");
        Ok(CniServer {
            listener,
            path: path.to_path_buf(),
            inode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `cancel`, then lets connections in flight finish (bounded).
    pub async fn serve(self, ctx: CniContext, cancel: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ctx = ctx.clone();
                        tracker.spawn(connection(stream, ctx));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "CNI socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        // Stop accepting: remove our socket (not a successor's).
        drop(self.listener);
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("CNI requests still in flight at shutdown were abandoned");
        }
        tracing::info!("CNI server stopped");
    }
}

async fn connection(stream: UnixStream, ctx: CniContext) {
    let started = Instant::now();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = Vec::new();
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let (op, response) = match read {
        Ok(Ok(n)) if n > 0 => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => dispatch(req, &ctx).await,
            Err(e) => (
                CniOp::Invalid,
                Response::error(
                    CNI_DECODE_FAILURE,
                    "nftpol agent: cannot decode the request",
                    e.to_string(),
                ),
            ),
        },
        Ok(Ok(_)) => (
            CniOp::Invalid,
            Response::error(CNI_DECODE_FAILURE, "nftpol agent: empty request", ""),
        ),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "CNI connection read failed");
            return;
        }
        Err(_) => (
            CniOp::Invalid,
            Response::error(CNI_DECODE_FAILURE, "nftpol agent: request timed out", ""),
        ),
    };
    let result = match &response.error {
        None => CniResult::Ok,
        Some(e) if e.code == CNI_TRY_AGAIN => CniResult::TryAgain,
        Some(_) => CniResult::Error,
    };
    ctx.metrics
        .cni_observed(op, result, started.elapsed().as_secs_f64());
    let mut out = match serde_json::to_vec(&response) {
        Ok(v) => v,
        Err(_) => br#"{"ok":false,"error":{"code":999,"msg":"encoding failed"}}"#.to_vec(),
    };
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        // The plugin gave up (its deadline passed); the outcome stands anyway.
        tracing::debug!(error = %e, "CNI client went away before the answer");
    }
    let _ = write.shutdown().await;
}

async fn dispatch(req: Request, ctx: &CniContext) -> (CniOp, Response) {
    match req {
        Request::Add(a) => {
            let (pod, container) = (
                format!("{}/{}", a.namespace, a.name),
                a.id.container_id.clone(),
            );
            let r = add(a, ctx).await;
            match &r.error {
                None => tracing::info!(pod, container, "ADD: pod isolated"),
                Some(e) => {
                    tracing::warn!(pod, container, code = e.code, error = %e.msg, details = %e.details, "ADD failed")
                }
            }
            (CniOp::Add, r)
        }
        Request::Del(a) => {
            let r = call(ctx, |reply| CniCall::Del {
                attachment: a,
                reply,
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e.msg, "DEL not processed");
                Response::ok()
            });
            (CniOp::Del, r)
        }
        Request::Check(a) => {
            let r = call(ctx, |reply| CniCall::Check {
                attachment: a,
                reply,
            })
            .await
            .unwrap_or_else(into_response);
            (CniOp::Check, r)
        }
        Request::Gc { valid } => {
            let r = call(ctx, |reply| CniCall::Gc { valid, reply })
                .await
                .unwrap_or_else(into_response);
            (CniOp::Gc, r)
        }
        Request::Status => {
            let r = match ctx.health.ready() {
                Ok(()) => Response::ok(),
                Err(why) => Response::error(
                    CNI_NOT_AVAILABLE,
                    format!("nftpol agent not ready: {why}"),
                    "",
                ),
            };
            (CniOp::Status, r)
        }
    }
}

/// A transient failure to reach the engine.
struct Unavailable {
    msg: String,
}

fn into_response(u: Unavailable) -> Response {
    Response::error(CNI_TRY_AGAIN, u.msg, "")
}

async fn call<T>(
    ctx: &CniContext,
    make: impl FnOnce(oneshot::Sender<T>) -> CniCall,
) -> Result<T, Unavailable> {
    let (tx, rx) = oneshot::channel();
    ctx.engine
        .send(Input::Cni(make(tx)))
        .await
        .map_err(|_| Unavailable {
            msg: "nftpol agent is shutting down".into(),
        })?;
    rx.await.map_err(|_| Unavailable {
        msg: "nftpol agent is shutting down".into(),
    })
}

async fn add(a: Attachment, ctx: &CniContext) -> Response {
    if !ctx.health.is_initialized() {
        let mut ready = ctx.health.initialized();
        let waited = tokio::time::timeout(ctx.ready_timeout, ready.wait_for(|r| *r)).await;
        if !matches!(waited, Ok(Ok(_))) {
            return Response::error(
                CNI_TRY_AGAIN,
                format!(
                    "nftpol agent not ready after {:.1} s: caches not synced yet",
                    ctx.ready_timeout.as_secs_f64()
                ),
                "",
            );
        }
    }
    let mut pod: Option<Pod> = None;
    for _ in 0..2 {
        let attachment = a.clone();
        let sent = pod.take();
        let reply = call(ctx, |reply| CniCall::Add {
            attachment,
            pod: sent,
            reply,
        })
        .await;
        match reply {
            Err(u) => return into_response(u),
            Ok(AddReply::Done(r)) => return r,
            Ok(AddReply::NeedPod) => match fetch(&a, ctx).await {
                Ok(p) => pod = Some(p),
                Err(r) => return r,
            },
        }
    }
    Response::error(
        CNI_TRY_AGAIN,
        format!("pod {}/{} not known to the agent yet", a.namespace, a.name),
        "",
    )
}

async fn fetch(a: &Attachment, ctx: &CniContext) -> Result<Pod, Response> {
    let key = format!("{}/{}", a.namespace, a.name);
    let Some(f) = &ctx.pods else {
        return Err(Response::error(
            CNI_TRY_AGAIN,
            format!("pod {key} not known to the agent yet"),
            "",
        ));
    };
    let api: Api<ApiPod> = Api::namespaced(f.client.clone(), &a.namespace);
    let got = tokio::time::timeout(f.timeout, api.get_opt(&a.name)).await;
    let obj = match got {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => {
            return Err(Response::error(
                CNI_TRY_AGAIN,
                format!("pod {key} not found in the API server"),
                "",
            ));
        }
        Ok(Err(e)) => {
            return Err(Response::error(
                CNI_TRY_AGAIN,
                format!("cannot get pod {key} from the API server"),
                e.to_string(),
            ));
        }
        Err(_) => {
            return Err(Response::error(
                CNI_TRY_AGAIN,
                format!(
                    "getting pod {key} from the API server timed out after {:.1} s",
                    f.timeout.as_secs_f64()
                ),
                "",
            ));
        }
    };
    if let (Some(want), Some(got)) = (&a.uid, &obj.metadata.uid)
        && want != got
    {
        tracing::warn!(pod = %key, want, got, "ADD for another incarnation of the pod");
    }
    let converted = f
        .converter
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pod(&obj);
    converted.map_err(|e| {
        Response::error(
            CNI_TRY_AGAIN,
            format!("pod {key} from the API server is invalid"),
            e.to_string(),
        )
    })
}
