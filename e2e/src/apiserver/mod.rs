//! A minimal stand-in for kube-apiserver, for tests only.
//!
//! TEST CODE. No kube-apiserver (nor etcd, kind or a container runtime) can run on this
//! machine, yet the nftpol agent must be tested as it runs in a cluster: unchanged, talking
//! to an API server through a kubeconfig with kube-rs watchers. This module serves enough of
//! the Kubernetes API over plain HTTP on 127.0.0.1 for that, with the semantics kube-runtime's
//! watcher depends on, and gives tests control over objects and faults.
//!
//! # What is served
//!
//! | resource | paths |
//! |---|---|
//! | `v1` namespaces, nodes (cluster-scoped) | `/api/v1/{namespaces,nodes}[/name]` |
//! | `v1` pods, events | `/api/v1/{pods,events}`, `/api/v1/namespaces/<ns>/{pods,events}[/name]` |
//! | `networking.k8s.io/v1` networkpolicies | `/apis/networking.k8s.io/v1/[namespaces/<ns>/]networkpolicies[/name]` |
//! | `events.k8s.io/v1` events | `/apis/events.k8s.io/v1/[namespaces/<ns>/]events[/name]` |
//! | discovery | `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>[/v1]`; aggregated discovery (v2) of `/api` and `/apis` when asked for by `Accept` |
//!
//! Verbs: get, list, watch, create (POST), update (PUT), patch (merge patch; strategic merge
//! patch is treated as a merge patch), delete.
//!
//! # Semantics kube-runtime relies on
//!
//! - One global, monotonically increasing `resourceVersion` (like an etcd revision); every
//!   object carries the version of its last change; lists carry the version they were read at.
//! - LIST: `limit` + `continue` pagination where all pages are one consistent snapshot
//!   (objects changed between pages show up in their old state); `resourceVersion` unset
//!   (most recent), `"0"` (any), `N` with `resourceVersionMatch` `NotOlderThan` (default
//!   without `limit`) or `Exact` (default with `limit`); `labelSelector` (`=`, `==`, `!=`,
//!   `in`, `notin`, `key`, `!key`); `fieldSelector` (`=`, `==`, `!=` on `metadata.name`,
//!   `metadata.namespace` and a few per-kind fields, `spec.nodeName` for pods).
//! - WATCH (`watch=true`): newline-delimited JSON watch events in a chunked response;
//!   `resourceVersion` N streams changes after N; unset or `"0"` first sends the current
//!   objects as ADDED; `sendInitialEvents=true` (streaming lists, with
//!   `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`) sends them and then a
//!   BOOKMARK annotated `k8s.io/initial-events-end`; `allowWatchBookmarks` adds periodic
//!   BOOKMARKs; `timeoutSeconds` ends the stream cleanly; selectors filter, and an object
//!   that stops (starts) matching is sent as DELETED (ADDED).
//! - A watch from a resource version older than the retained history answers HTTP 200 with
//!   one ERROR event carrying a 410 `Expired` Status (what kube-apiserver does, and what
//!   makes kube-runtime re-list: an HTTP 410 at watch start would make it retry the same
//!   version forever); a list at such a version or with such a continue token answers HTTP 410.
//! - Objects look as kube-apiserver returns them: `apiVersion`/`kind` on single objects and
//!   watch events (list items go without, as from the real server), `metadata.uid`,
//!   `creationTimestamp`, `resourceVersion`; namespaces get the
//!   `kubernetes.io/metadata.name` label. Errors are `Status` objects (404 NotFound, 409
//!   AlreadyExists/Conflict, 422 Invalid, ...). An update that changes nothing keeps the
//!   resource version and produces no watch event.
//!
//! # Deviations (deliberate, for tests)
//!
//! No authentication/authorization, no admission: objects may be created in a namespace
//! that does not exist, `status` is stored as given on create and update (there is no
//! kubelet to set it; tests play the kubelet), deletion is immediate (no graceful deletion,
//! no finalizers, deleting a namespace leaves its objects), no server-side apply, no JSON
//! patch, no protobuf, no table output. Core and `events.k8s.io` Events are two separate
//! stores. Bookmarks come every [`ServerBuilder::bookmark_interval`] (real: about a minute).
//!
//! # Scale
//!
//! Objects are kept once, as JSON bytes, with a small index (interned namespace, name,
//! labels and selector fields). Measured on the 2-core test machine (release build, shared
//! with other jobs): 150 000 pods (~900 B of JSON each) + 10 000 namespaces + 10 000
//! policies load in 2-4 s and add ~200 MiB of RSS (130 MiB of it JSON); the server answers
//! the 300 pages of 500 pods (125 MiB) in ~75 ms. A kube-rs client needs 1.6-7 s to list and
//! decode them (client-bound). See the `scale_*` test in `e2e/tests/apiserver.rs`.
//!
//! # Control API
//!
//! [`Server`] is synchronous and thread-safe: create/update/patch/delete objects from JSON
//! values, read them back, count requests per verb and kind, and inject faults
//! ([`Server::close_watches`], [`Server::drop_connections`], [`Server::expire_history`],
//! [`Server::set_latency`], [`Server::pause`]/[`Server::resume`]). It runs on its own std
//! threads (one per connection) and stops on [`Server::shutdown`] or drop.
//!
//! ```no_run
//! use nftpol_e2e::apiserver::{Kind, Server, Verb};
//! use serde_json::json;
//!
//! let server = Server::start()?;
//! server.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))?;
//! // run the agent with KUBECONFIG=server.kubeconfig_path() ...
//! assert_eq!(server.requests(Verb::List, Kind::Pod), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod handler;
mod http;
mod kinds;
mod meta;
mod selector;
mod store;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use kinds::Kind;
pub use store::ApiError;

use kinds::KIND_COUNT;
use store::{Preconditions, Store};

/// How many requests [`Server::request_log`] keeps.
const REQUEST_LOG_LIMIT: usize = 10_000;

/// Errors starting or stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the test API server to 127.0.0.1: {0}")]
    Bind(#[source] io::Error),
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the test API server's accept thread: {0}")]
    Thread(#[source] io::Error),
}

/// A request verb, as in Kubernetes audit logs and RBAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        })
    }
}

/// One request the server received, for assertions and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// Verb and kind, for resource requests.
    pub resource: Option<(Verb, Kind)>,
    /// HTTP status of the response (200 for a watch, whose errors come as events).
    pub status: u16,
}

impl fmt::Display for RequestRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.status, self.method, self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "?" } else { "&" })?;
        }
        Ok(())
    }
}

/// Sizes of the store ([`Server::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects of all kinds.
    pub objects: usize,
    /// Bytes of their stored JSON.
    pub json_bytes: usize,
    /// Changes kept in the history.
    pub history: usize,
    pub resource_version: u64,
}

/// Mutable state, under one mutex with one condition variable (`Shared::changed`) that is
/// notified on every change a waiting thread may care about.
struct State {
    store: Store,
    paused: bool,
    latency: Duration,
    /// Bumped by `close_watches`: watches started under an older value end.
    watch_generation: u64,
    counters: BTreeMap<(Verb, Kind), u64>,
    log: VecDeque<RequestRecord>,
    open_watches: [usize; KIND_COUNT],
}

struct Connections {
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    connections: Mutex<Connections>,
    next_connection: AtomicU64,
    stop: AtomicBool,
    addr: SocketAddr,
    bookmark_interval: Duration,
    default_watch_timeout: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the whole server down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connections(&self) -> MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits on the condition variable for at most `timeout`.
    fn wait<'a>(&self, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// Applies the configured latency, then waits while paused. Returns `false` when the
    /// server is stopping.
    fn wait_ready(&self) -> bool {
        let mut state = self.lock();
        let until = Instant::now() + state.latency;
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now < until {
                state = self.wait(state, until - now);
            } else if state.paused {
                state = self.wait(state, Duration::from_millis(100));
            } else {
                return true;
            }
        }
    }
}

/// Options of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    bookmark_interval: Duration,
    history_limit: usize,
    watch_timeout: Duration,
    kubeconfig_dir: Option<PathBuf>,
    listener: Option<Arc<TcpListener>>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
            history_limit: 1_000_000,
            watch_timeout: Duration::from_secs(1800),
            kubeconfig_dir: None,
            listener: None,
        }
    }
}

impl ServerBuilder {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (default 5 s).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many changes the history keeps (default 1 000 000). Older changes are dropped
    /// like an etcd compaction: watches and lists at older versions answer 410.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// How long a watch without `timeoutSeconds` lasts (default 30 min).
    pub fn watch_timeout(mut self, timeout: Duration) -> Self {
        self.watch_timeout = timeout;
        self
    }

    /// Where to write the kubeconfig (default: a new directory under the system temp dir,
    /// removed on shutdown). A given directory is not removed.
    pub fn kubeconfig_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.kubeconfig_dir = Some(dir.into());
        self
    }

    /// Serves on an already bound listener instead of 127.0.0.1 on a random port: e.g. one
    /// bound from a thread inside a test network namespace, so that node agents in other
    /// namespaces can reach the server over the test network. The kubeconfig points at the
    /// listener's address.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Binds 127.0.0.1 on a random port (or uses [`listener`](Self::listener)), writes the
    /// kubeconfig and starts serving.
    pub fn start(self) -> Result<Server, ServerError> {
        let listener = match self.listener {
            Some(l) => Arc::try_unwrap(l)
                .or_else(|l| l.try_clone())
                .map_err(ServerError::Bind)?,
            None => TcpListener::bind("127.0.0.1:0").map_err(ServerError::Bind)?,
        };
        let addr = listener.local_addr().map_err(ServerError::Bind)?;
        let url = format!("http://{addr}");
        let (dir, owned_dir) = match self.kubeconfig_dir {
            Some(dir) => (dir, false),
            None => {
                static SEQ: AtomicU64 = AtomicU64::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "nftpol-apiserver-{}-{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                (dir, true)
            }
        };
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&dir, &kubeconfig, &url).map_err(|source| ServerError::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                store: Store::new(self.history_limit),
                paused: false,
                latency: Duration::ZERO,
                watch_generation: 0,
                counters: BTreeMap::new(),
                log: VecDeque::new(),
                open_watches: [0; KIND_COUNT],
            }),
            changed: Condvar::new(),
            connections: Mutex::new(Connections {
                open: HashMap::new(),
                threads: Vec::new(),
            }),
            next_connection: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            addr,
            bookmark_interval: self.bookmark_interval,
            default_watch_timeout: self.watch_timeout,
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("apiserver-accept".into())
            .spawn(move || accept_loop(&accept_shared, &listener))
            .map_err(ServerError::Thread)?;
        tracing::debug!(%url, kubeconfig = %kubeconfig.display(), "test API server started");
        Ok(Server {
            shared,
            url,
            kubeconfig,
            owned_dir: owned_dir.then_some(dir),
            accept: Mutex::new(Some(accept)),
        })
    }
}

fn write_kubeconfig(dir: &Path, path: &Path, url: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "# Written by nftpol-e2e's test API server (plain HTTP, no authentication).\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: nftpol-test\n  cluster:\n    server: {url}\n\
         contexts:\n\
         - name: nftpol-test\n  context:\n    cluster: nftpol-test\n    user: nftpol-test\n    namespace: default\n\
         current-context: nftpol-test\n\
         users:\n\
         - name: nftpol-test\n  user: {{}}\n"
    );
    std::fs::write(path, text)
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "test API server: accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let mut connections = shared.connections();
        connections.threads.retain(|t| !t.is_finished());
        // Registered before the thread runs, so its removal at the end cannot come first.
        if let Ok(clone) = stream.try_clone() {
            connections.open.insert(id, clone);
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("apiserver-conn-{id}"))
            .spawn(move || {
                handler::serve_connection(&conn_shared, stream);
                conn_shared.connections().open.remove(&id);
            });
        match spawned {
            Ok(thread) => connections.threads.push(thread),
            Err(err) => {
                connections.open.remove(&id);
                tracing::warn!(error = %err, "test API server: cannot start a connection thread");
            }
        }
    }
}

/// The test API server. See the [module docs](self).
pub struct Server {
    shared: Arc<Shared>,
    url: String,
    kubeconfig: PathBuf,
    owned_dir: Option<PathBuf>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Starts a server with default options.
    pub fn start() -> Result<Server, ServerError> {
        ServerBuilder::default().start()
    }

    /// Options: bookmark interval, history size, watch timeout, kubeconfig directory.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A kubeconfig whose current context points at this server, without credentials.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    // ---- objects ----

    /// Creates an object; its kind comes from `apiVersion` and `kind`, namespaced objects
    /// need `metadata.namespace`. Returns the stored object (uid, creationTimestamp,
    /// resourceVersion filled in).
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&object)?;
        let mut state = self.shared.lock();
        let obj = state.store.create(kind, None, object)?;
        drop(state);
        self.shared.changed.notify_all();
        Ok(obj.to_value(kind))
    }

    /// Creates many objects under one lock (fast seeding); stops at the first error.
    /// Returns how many were created.
    pub fn create_all(&self, objects: impl IntoIterator<Item = Value>) -> Result<usize, ApiError> {
        let mut state = self.shared.lock();
        let mut created = 0;
        let mut result = Ok(());
        for object in objects {
            match kind_of(&object).and_then(|kind| state.store.create(kind, None, object)) {
                Ok(_) => created += 1,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        drop(state);
        self.shared.changed.notify_all();
        result.map(|()| created)
    }

    /// Replaces an object (PUT semantics: a non-empty `metadata.resourceVersion` must be the
    /// current one).
    pub fn update(&self, object: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&object)?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut state = self.shared.lock();
        let obj = state.store.replace(kind, None, &name, object)?;
        drop(state);
        self.shared.changed.notify_all();
        Ok(obj.to_value(kind))
    }

    /// Creates the object, or replaces it unconditionally if it exists.
    pub fn apply(&self, mut object: Value) -> Result<Value, ApiError> {
        let kind = kind_of(&object)?;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut state = self.shared.lock();
        let ns = if kind.namespaced() {
            namespace.as_str()
        } else {
            ""
        };
        let obj = if state.store.get(kind, ns, &name).is_some() {
            state.store.replace(kind, None, &name, object)?
        } else {
            state.store.create(kind, None, object)?
        };
        drop(state);
        self.shared.changed.notify_all();
        Ok(obj.to_value(kind))
    }

    /// Applies a JSON merge patch (RFC 7386) to an object.
    pub fn patch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        merge_patch: Value,
    ) -> Result<Value, ApiError> {
        let mut state = self.shared.lock();
        let obj = state
            .store
            .patch(kind, namespace.unwrap_or_default(), name, &merge_patch)?;
        drop(state);
        self.shared.changed.notify_all();
        Ok(obj.to_value(kind))
    }

    /// Deletes an object at once; returns its last state.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut state = self.shared.lock();
        let obj = state.store.delete(
            kind,
            namespace.unwrap_or_default(),
            name,
            &Preconditions::default(),
        )?;
        drop(state);
        self.shared.changed.notify_all();
        Ok(obj.to_value(kind))
    }

    /// One object, as GET returns it.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let obj = self
            .shared
            .lock()
            .store
            .get(kind, namespace.unwrap_or_default(), name);
        obj.map(|o| o.to_value(kind))
    }

    /// All objects of a kind, ordered by namespace and name.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        let objs = self.shared.lock().store.current(kind, None);
        objs.iter().map(|o| o.to_value(kind)).collect()
    }

    /// `(namespace, name, resourceVersion)` of all objects of a kind, ordered; cheaper than
    /// [`Server::objects`] for comparing with a client's cache.
    pub fn keys(&self, kind: Kind) -> Vec<(String, String, String)> {
        let objs = self.shared.lock().store.current(kind, None);
        objs.iter()
            .map(|o| {
                (
                    o.namespace.to_string(),
                    o.name.to_string(),
                    o.rv.to_string(),
                )
            })
            .collect()
    }

    /// Number of objects of a kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.shared.lock().store.count(kind)
    }

    /// Events received: core `v1` Events, then `events.k8s.io/v1` Events.
    pub fn events(&self) -> Vec<Value> {
        let mut events = self.objects(Kind::CoreEvent);
        events.extend(self.objects(Kind::Event));
        events
    }

    /// What the server holds, for scale figures.
    pub fn stats(&self) -> StoreStats {
        let state = self.shared.lock();
        let (objects, json_bytes, history) = state.store.sizes();
        StoreStats {
            objects,
            json_bytes,
            history,
            resource_version: state.store.resource_version(),
        }
    }

    /// The current (global) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    // ---- requests ----

    /// How many requests with this verb on this kind arrived (counted on arrival, whatever
    /// the outcome).
    pub fn requests(&self, verb: Verb, kind: Kind) -> u64 {
        self.shared
            .lock()
            .counters
            .get(&(verb, kind))
            .copied()
            .unwrap_or(0)
    }

    /// All request counters.
    pub fn request_counts(&self) -> BTreeMap<(Verb, Kind), u64> {
        self.shared.lock().counters.clone()
    }

    /// The last requests (at most 10 000), oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Resets request counters and the request log.
    pub fn reset_requests(&self) {
        let mut state = self.shared.lock();
        state.counters.clear();
        state.log.clear();
    }

    /// Number of watch streams of a kind currently open.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.shared.lock().open_watches[kind.index()]
    }

    /// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, condition: impl Fn(&Server) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // ---- faults ----

    /// Ends every open watch stream cleanly (final chunk), as when kube-apiserver's watch
    /// timeout fires or it restarts gracefully. Clients resume from their last version.
    pub fn close_watches(&self) {
        self.shared.lock().watch_generation += 1;
        self.shared.changed.notify_all();
    }

    /// Cuts every open TCP connection (watches mid-stream, idle keep-alive ones too), as a
    /// network failure or a crash would.
    pub fn drop_connections(&self) {
        for stream in self.shared.connections().open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }

    /// Makes every resource version issued so far too old: new watches and lists at them,
    /// and continue tokens, answer 410 Expired (open watches go on). Combine with
    /// [`Server::close_watches`] to make clients re-list.
    pub fn expire_history(&self) {
        self.shared.lock().store.expire_history();
        self.shared.changed.notify_all();
    }

    /// Delays every response by `latency` (watch events are not delayed once streaming).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
        self.shared.changed.notify_all();
    }

    /// Stalls: requests are read but not answered, watch streams send nothing (they still
    /// end on [`Server::close_watches`]), until [`Server::resume`].
    pub fn pause(&self) {
        self.shared.lock().paused = true;
    }

    /// Ends [`Server::pause`].
    pub fn resume(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    /// Stops serving: closes the listener and every connection, joins all threads and
    /// removes the kubeconfig directory it created. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let accept = self
            .accept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(accept) = accept else { return };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        {
            // Take the lock so no thread misses the wake-up between its check and its wait.
            let _state = self.shared.lock();
            self.shared.changed.notify_all();
        }
        let _ = accept.join();
        let threads = {
            let mut connections = self.shared.connections();
            for stream in connections.open.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut connections.threads)
        };
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(dir) = &self.owned_dir
            && let Err(err) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the test API server's kubeconfig directory");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// The kind of a JSON object from its `apiVersion` and `kind`.
fn kind_of(object: &Value) -> Result<Kind, ApiError> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    Kind::from_type(api_version, kind).ok_or_else(|| ApiError::BadRequest {
        message: format!(
            "no resource for apiVersion {api_version:?} kind {kind:?}; the test API server serves {}",
            Kind::ALL
                .iter()
                .map(|k| format!("{} {}", k.api_version(), k.kind_name()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}
