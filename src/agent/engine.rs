//! The engine: the one place that owns the compiler, the attachment list and the dataplane,
//! and so the only writer of the table.
//!
//! Everything reaches it as an [`Input`] on one channel: watch events (already converted to
//! core types), CNI requests (each with a reply channel), kernel change notifications, and
//! shutdown. It runs on a thread of its own ([`ENGINE_THREAD`]) with a single-threaded tokio
//! runtime for its timers, so its blocking netlink calls and CPU-heavy compiles never stall
//! the watchers, the CNI server or `/metrics`; and because the thread has a fixed name, the
//! kernel monitor can tell our commits from everyone else's.
//!
//! # Sync rules
//!
//! - **Readiness gate.** Nothing is programmed until every watched kind has delivered its
//!   complete initial list (`InitDone`); until then whatever table an earlier agent left in
//!   the kernel stays in force (fail-static across restarts).
//! - **First sync** is a full one: dump the live table, `diff` it against the desired table,
//!   apply one transaction. There is never a moment without a table or with an empty one.
//!   Only then does the agent become ready.
//! - **Changes** are debounced: the engine waits `debounce` after the latest change, but never
//!   more than `debounce_max` after the first, then commits the compiler and applies its
//!   delta (an incremental sync). CNI ADD/DEL/GC skip the wait and sync at once.
//! - **Any failure** (an apply or dump error, a transaction the kernel refused) makes the next
//!   sync a full one, retried with backoff (200 ms doubling to 30 s). A refusal that may come
//!   from an ingress base chain on a vanished interface (ENOENT/ENODEV on kernels before
//!   6.16) first drops attachments whose interface is gone and retries once at once.
//! - **Drift.** A full sync runs every `resync_interval`, and ~50 ms after the kernel monitor
//!   reports a foreign commit on our table (or, when notifications are unavailable or turned
//!   off, every `kernel_poll_interval`). A full sync that finds the kernel differing from the
//!   desired table counts `nftpol_kernel_drift_total` and logs a warning.
//! - **Shutdown** leaves the table in the kernel and saves the attachment list.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nftpol_cni::protocol::{Attachment, AttachmentId, Response};
use tokio::sync::{mpsc, oneshot};

use super::attachments::{AttachmentStore, Links, pod_key};
use super::health::Health;
use super::kernel::{ENGINE_THREAD, Monitor};
use super::metrics::{KindLabels, Metrics, ObjectKind, SyncKind, SyncLabels};
use crate::core::cluster::{Namespace, Node, ObjectKey, Pod, Str};
use crate::core::compile::{Compiler, Config};
use crate::core::policy::NetworkPolicy;
use crate::dataplane::{ApplyReport, Dataplane, DataplaneError};
use crate::nft::diff;
use crate::nft::diff::ErrorKind;
use crate::nft::transaction::Transaction;

/// CNI error code: try again later (the runtime retries).
pub const CNI_TRY_AGAIN: u32 = 11;
/// CNI error code: the container (attachment) is unknown.
pub const CNI_UNKNOWN_CONTAINER: u32 = 3;
/// CNI error code: invalid environment (missing pod namespace or name).
pub const CNI_INVALID_ENV: u32 = 4;
/// nftpol's own CNI error code (CHECK): the kernel lacks some of the pod's table entries.
pub const CNI_NOT_ENFORCED: u32 = 100;
/// STATUS when not ready: "plugin not available" in the CNI spec.
pub const CNI_NOT_AVAILABLE: u32 = 50;

const CHANNEL_CAPACITY: usize = 4096;
/// Inputs handled per wake-up before the engine looks at its timers again.
const DRAIN_LIMIT: usize = 4096;
/// Latency samples kept while a sync is pending (older ones are dropped beyond that).
const ARRIVALS_LIMIT: usize = 100_000;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Coalesces a burst of foreign commits into one repair.
const VERIFY_DELAY: Duration = Duration::from_millis(50);
const TICK: Duration = Duration::from_secs(1);

/// How the engine notices changes made to the table by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelWatch {
    /// nf_tables notifications (falls back to polling if the socket cannot be opened).
    Notify,
    /// A full sync every `kernel_poll_interval`.
    Poll,
    /// Only the periodic resync.
    Off,
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: String,
    pub table: String,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub resync_interval: Duration,
    pub kernel_watch: KernelWatch,
    pub kernel_poll_interval: Duration,
}

impl EngineConfig {
    pub fn new(node: impl Into<String>) -> EngineConfig {
        EngineConfig {
            node: node.into(),
            table: crate::core::compile::DEFAULT_TABLE.to_string(),
            debounce: Duration::from_millis(20),
            debounce_max: Duration::from_millis(250),
            resync_interval: Duration::from_secs(300),
            kernel_watch: KernelWatch::Notify,
            kernel_poll_interval: Duration::from_secs(2),
        }
    }
}

/// A converted object from a watch.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Policy(NetworkPolicy),
}

impl Object {
    pub fn id(&self) -> ObjectId {
        match self {
            Object::Namespace(n) => ObjectId::Namespace(n.name.clone()),
            Object::Node(n) => ObjectId::Node(n.name.clone()),
            Object::Pod(p) => ObjectId::Pod(p.key()),
            Object::Policy(p) => ObjectId::Policy(p.key()),
        }
    }
}

/// Identity of a watched object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectId {
    Namespace(Str),
    Node(Str),
    Pod(ObjectKey),
    Policy(ObjectKey),
}

impl ObjectId {
    pub fn kind(&self) -> ObjectKind {
        match self {
            ObjectId::Namespace(_) => ObjectKind::Namespace,
            ObjectId::Node(_) => ObjectKind::Node,
            ObjectId::Pod(_) => ObjectKind::Pod,
            ObjectId::Policy(_) => ObjectKind::Networkpolicy,
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectId::Namespace(n) | ObjectId::Node(n) => write!(f, "{} {n}", self.kind()),
            ObjectId::Pod(k) | ObjectId::Policy(k) => write!(f, "{} {k}", self.kind()),
        }
    }
}

/// What a watch reported.
#[derive(Debug, Clone)]
pub enum Change {
    /// The watch starts a complete list (kube's `Init`).
    Relist(ObjectKind),
    /// An object was added or changed.
    Upsert(Object),
    /// The object's current version is invalid: its last valid version stays (and it
    /// counts as present for a relist).
    Keep(ObjectId),
    Delete(ObjectId),
    /// The list is complete (kube's `InitDone`): objects not seen since `Relist` are gone.
    Synced(ObjectKind),
}

/// A watch event and when it arrived (for the enforcement latency).
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub change: Change,
    pub arrived: Instant,
}

impl WatchEvent {
    pub fn now(change: Change) -> WatchEvent {
        WatchEvent {
            change,
            arrived: Instant::now(),
        }
    }
}

/// Answer to an ADD.
#[derive(Debug)]
pub enum AddReply {
    Done(Response),
    /// The pod is unknown: GET it from the API server and send the ADD again with it.
    NeedPod,
}

/// A CNI request for the engine (STATUS is answered from [`Health`]).
#[derive(Debug)]
pub enum CniCall {
    Add {
        attachment: Attachment,
        /// The pod as fetched from the API server, when the watch has not delivered it.
        pod: Option<Pod>,
        reply: oneshot::Sender<AddReply>,
    },
    Del {
        attachment: Attachment,
        reply: oneshot::Sender<Response>,
    },
    Check {
        attachment: Attachment,
        reply: oneshot::Sender<Response>,
    },
    Gc {
        valid: Vec<AttachmentId>,
        reply: oneshot::Sender<Response>,
    },
}

/// Everything the engine acts on.
#[derive(Debug)]
pub enum Input {
    Watch(WatchEvent),
    Cni(CniCall),
    /// Someone else committed a change touching our table.
    KernelChanged {
        by: String,
    },
    /// The notification monitor stopped working: poll instead.
    KernelMonitorFailed,
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("opening the dataplane: {0}")]
    Dataplane(#[source] DataplaneError),
    #[error("starting the engine thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("starting the engine's timer runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the engine thread panicked")]
    Panicked,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading table inet {table} back: {source}")]
    Dump {
        table: String,
        #[source]
        source: DataplaneError,
    },
    #[error("applying to table inet {table} ({stats}): {source}")]
    Apply {
        table: String,
        stats: String,
        #[source]
        source: DataplaneError,
    },
}

/// Creates the dataplane on the engine thread (netlink sockets belong to the network
/// namespace of the thread that opens them).
pub type DataplaneFactory =
    Box<dyn FnOnce() -> Result<Box<dyn Dataplane>, DataplaneError> + Send + 'static>;

/// What the engine is built from.
pub struct EngineParts {
    pub dataplane: DataplaneFactory,
    pub links: Box<dyn Links>,
    pub store: AttachmentStore,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// The running engine.
#[derive(Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Input>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Where to send inputs.
    pub fn sender(&self) -> mpsc::Sender<Input> {
        self.tx.clone()
    }

    /// Asks the engine to stop after the inputs already queued, and waits for it. The table
    /// stays in the kernel.
    pub async fn shutdown(mut self) -> Result<(), EngineError> {
        let _ = self.tx.send(Input::Shutdown).await;
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| EngineError::Panicked)?
            .map_err(|_| EngineError::Panicked)
    }
}

/// Starts the engine thread. Fails if the dataplane cannot be opened.
pub fn spawn(cfg: EngineConfig, parts: EngineParts) -> Result<EngineHandle, EngineError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), EngineError>>();
    let self_tx = tx.clone();
    let thread = std::thread::Builder::new()
        .name(ENGINE_THREAD.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = started_tx.send(Err(EngineError::Runtime(e)));
                    return;
                }
            };
            let EngineParts {
                dataplane,
                links,
                store,
                metrics,
                health,
            } = parts;
            let dp = match dataplane() {
                Ok(dp) => dp,
                Err(e) => {
                    let _ = started_tx.send(Err(EngineError::Dataplane(e)));
                    return;
                }
            };
            let mut engine = Engine::new(cfg, dp, links, store, metrics, health);
            let _ = started_tx.send(Ok(()));
            runtime.block_on(engine.run(rx, self_tx));
        })
        .map_err(EngineError::Thread)?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(EngineHandle {
            tx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(EngineError::Panicked)
        }
    }
}

/// What started a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The first sync after all caches synced.
    Initial,
    /// Debounced object changes.
    Changes,
    /// A CNI request.
    Cni,
    /// Retry after a failure.
    Retry,
    /// The periodic full resync.
    Resync,
    /// A foreign commit touched the table.
    KernelChanged,
    /// The kernel poll (no notifications).
    Poll,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Changes => "changes",
            Trigger::Cni => "cni",
            Trigger::Retry => "retry",
            Trigger::Resync => "resync",
            Trigger::KernelChanged => "kernel-changed",
            Trigger::Poll => "poll",
        }
    }

    /// Triggers that always dump and diff.
    fn is_full(self) -> bool {
        !matches!(self, Trigger::Changes | Trigger::Cni)
    }

    /// Full syncs that expect the kernel to hold the desired table already: a difference is
    /// drift (someone else changed it).
    fn checks_drift(self) -> bool {
        matches!(
            self,
            Trigger::Resync | Trigger::KernelChanged | Trigger::Poll
        )
    }
}

struct Engine {
    cfg: EngineConfig,
    compiler: Compiler,
    dp: Box<dyn Dataplane>,
    links: Box<dyn Links>,
    store: AttachmentStore,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Objects present in the API, per kind (for relists and the gauges). Pods are not kept
    /// here: the compiler holds every pod already (a second set of 150 000 keys costs ~10 MB).
    known: [HashSet<ObjectId>; 4],
    /// Objects seen since a relist started, per kind.
    relist: [Option<HashSet<ObjectId>>; 4],
    synced: [bool; 4],
    initialized: bool,
    needs_full: bool,
    failures: u32,
    retry_at: Option<Instant>,
    verify_at: Option<Instant>,
    next_resync: Instant,
    poll: bool,
    next_poll: Instant,
    /// First and latest change waiting for a debounced sync.
    pending: Option<(Instant, Instant)>,
    /// Arrival times of changes not yet in the kernel.
    arrivals: Vec<(ObjectKind, Instant)>,
    monitor_stop: Arc<AtomicBool>,
}

impl Engine {
    fn new(
        cfg: EngineConfig,
        dp: Box<dyn Dataplane>,
        links: Box<dyn Links>,
        store: AttachmentStore,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Engine {
        let compiler = Compiler::new(Config::new(cfg.node.as_str()).table(cfg.table.clone()));
        let now = Instant::now();
        let mut engine = Engine {
            poll: cfg.kernel_watch == KernelWatch::Poll,
            next_resync: now + cfg.resync_interval,
            next_poll: now + cfg.kernel_poll_interval,
            cfg,
            compiler,
            dp,
            links,
            store,
            metrics,
            health,
            known: Default::default(),
            relist: Default::default(),
            synced: [false; 4],
            initialized: false,
            needs_full: true,
            failures: 0,
            retry_at: None,
            verify_at: None,
            pending: None,
            arrivals: Vec::new(),
            monitor_stop: Arc::new(AtomicBool::new(false)),
        };
        let restored = engine.store.len();
        engine.prune_missing_links();
        let keys: HashSet<ObjectKey> = engine.store.iter().map(pod_key).collect();
        for key in keys {
            engine.refresh_attachment(&key);
        }
        if restored > 0 {
            tracing::info!(
                restored,
                kept = engine.store.len(),
                "restored CNI attachments from the state directory"
            );
        }
        engine.metrics.attachments.set(engine.store.len() as i64);
        engine
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Input>, self_tx: mpsc::Sender<Input>) {
        if self.cfg.kernel_watch == KernelWatch::Notify {
            match Monitor::open()
                .and_then(|m| m.spawn(&self.cfg.table, self_tx.clone(), self.monitor_stop.clone()))
            {
                Ok(_) => tracing::debug!("following nf_tables notifications"),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        interval = ?self.cfg.kernel_poll_interval,
                        "cannot follow nf_tables notifications; polling the table instead"
                    );
                    self.poll = true;
                }
            }
        }
        drop(self_tx);
        tracing::info!(
            node = %self.cfg.node,
            table = %self.cfg.table,
            "engine started; waiting for the caches to sync before programming anything"
        );
        'outer: loop {
            self.health.heartbeat();
            let deadline = self.next_wakeup(Instant::now());
            let first = tokio::select! {
                biased;
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(deadline.into()) => None,
            };
            if let Some(m) = first {
                if !self.handle(m) {
                    break 'outer;
                }
                for _ in 0..DRAIN_LIMIT {
                    match rx.try_recv() {
                        Ok(m) => {
                            if !self.handle(m) {
                                break 'outer;
                            }
                        }
                        Err(_) => break,
                    }
                }
            } else if rx.is_closed() && rx.is_empty() {
                break;
            }
            self.tick(Instant::now());
        }
        self.monitor_stop.store(true, Ordering::Relaxed);
        self.persist();
        tracing::info!(
            table = %self.cfg.table,
            "engine stopped; the table stays in the kernel"
        );
    }

    fn next_wakeup(&self, now: Instant) -> Instant {
        let mut t = now + TICK;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        if self.initialized {
            consider(Some(self.next_resync));
            consider(self.verify_at);
            consider(self.poll.then_some(self.next_poll));
            if !self.needs_full {
                // While a failed sync waits for its retry, pending changes wait with it.
                consider(self.debounce_deadline());
            }
        }
        consider(self.retry_at);
        t.max(now)
    }

    fn debounce_deadline(&self) -> Option<Instant> {
        self.pending.map(|(first, last)| {
            (last + self.cfg.debounce).min(first + self.cfg.debounce_max.max(self.cfg.debounce))
        })
    }

    /// Returns false on shutdown.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Watch(ev) => self.on_watch(ev),
            Input::Cni(call) => self.on_cni(call),
            Input::KernelChanged { by } => {
                if self.initialized {
                    tracing::warn!(
                        by = %by,
                        table = %self.cfg.table,
                        "table changed by someone else; restoring it"
                    );
                    self.verify_at
                        .get_or_insert_with(|| Instant::now() + VERIFY_DELAY);
                }
            }
            Input::KernelMonitorFailed => self.poll = true,
            Input::Shutdown => return false,
        }
        true
    }

    // ----- watch events ------------------------------------------------------------------

    fn on_watch(&mut self, ev: WatchEvent) {
        match ev.change {
            Change::Relist(kind) => {
                // Objects not seen again are deleted: with none known (the first list) none
                // can be, so the first list skips the set (~10 MB at 150 000 pods).
                let i = kind.index();
                self.relist[i] = (self.known_len(kind) > 0).then(HashSet::new);
            }
            Change::Upsert(obj) => {
                let id = obj.id();
                let kind = id.kind();
                if let Some(seen) = &mut self.relist[kind.index()] {
                    seen.insert(id.clone());
                }
                let changed = self.upsert(obj);
                self.remember(id);
                if changed {
                    self.note_change(kind, ev.arrived);
                }
            }
            Change::Keep(id) => {
                if let Some(seen) = &mut self.relist[id.kind().index()] {
                    seen.insert(id);
                }
            }
            Change::Delete(id) => {
                let kind = id.kind();
                self.remove(&id);
                self.forget(&id);
                self.note_change(kind, ev.arrived);
            }
            Change::Synced(kind) => {
                let i = kind.index();
                if let Some(seen) = self.relist[i].take() {
                    let gone: Vec<ObjectId> = if kind == ObjectKind::Pod {
                        self.compiler
                            .pod_keys()
                            .map(|k| ObjectId::Pod(k.clone()))
                            .filter(|id| !seen.contains(id))
                            .collect()
                    } else {
                        self.known[i]
                            .iter()
                            .filter(|id| !seen.contains(*id))
                            .cloned()
                            .collect()
                    };
                    if !gone.is_empty() {
                        tracing::info!(
                            kind = %kind,
                            count = gone.len(),
                            "objects deleted while the watch was down"
                        );
                    }
                    for id in gone {
                        self.remove(&id);
                        self.forget(&id);
                        self.note_change(kind, ev.arrived);
                    }
                }
                if !self.synced[i] {
                    self.synced[i] = true;
                    tracing::info!(kind = %kind, objects = self.known_len(kind), "cache synced");
                }
            }
        }
    }

    /// Feeds an object to the compiler; false if it is certainly irrelevant to the table.
    fn upsert(&mut self, obj: Object) -> bool {
        match obj {
            Object::Namespace(ns) => {
                self.compiler.upsert_namespace(ns);
                true
            }
            Object::Node(n) => {
                let local = *n.name == *self.cfg.node;
                self.compiler.upsert_node(n);
                local
            }
            Object::Pod(p) => {
                let changed = self.compiler.pod(&p.key()) != Some(&p);
                self.compiler.upsert_pod(p);
                changed
            }
            Object::Policy(p) => {
                self.compiler.upsert_policy(p);
                true
            }
        }
    }

    fn remove(&mut self, id: &ObjectId) {
        match id {
            ObjectId::Namespace(n) => self.compiler.remove_namespace(n),
            ObjectId::Node(n) => self.compiler.remove_node(n),
            ObjectId::Pod(k) => self.compiler.remove_pod(k),
            ObjectId::Policy(k) => self.compiler.remove_policy(k),
        }
    }

    fn known_len(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Pod => self.compiler.pod_count(),
            _ => self.known[kind.index()].len(),
        }
    }

    fn remember(&mut self, id: ObjectId) {
        if id.kind() != ObjectKind::Pod {
            self.known[id.kind().index()].insert(id);
        }
    }

    fn forget(&mut self, id: &ObjectId) {
        self.known[id.kind().index()].remove(id);
    }

    fn note_change(&mut self, kind: ObjectKind, arrived: Instant) {
        self.metrics.set_watched(kind, self.known_len(kind));
        if !self.initialized {
            return;
        }
        let now = Instant::now();
        self.pending = Some(match self.pending {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
        if self.arrivals.len() < ARRIVALS_LIMIT {
            self.arrivals.push((kind, arrived));
        }
    }

    // ----- timers and syncs --------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        for kind in ObjectKind::ALL {
            self.metrics.set_watched(kind, self.known_len(kind));
        }
        if !self.initialized {
            if self.synced.iter().all(|s| *s) && self.retry_at.is_none_or(|t| now >= t) {
                let _ = self.sync(Trigger::Initial);
            }
            return;
        }
        let trigger = if self.needs_full && self.retry_at.is_none_or(|t| now >= t) {
            Some(Trigger::Retry)
        } else if self.verify_at.is_some_and(|t| now >= t) {
            Some(Trigger::KernelChanged)
        } else if now >= self.next_resync {
            Some(Trigger::Resync)
        } else if self.poll && now >= self.next_poll {
            Some(Trigger::Poll)
        } else if self.debounce_deadline().is_some_and(|t| now >= t) && !self.needs_full {
            Some(Trigger::Changes)
        } else {
            None
        };
        if let Some(trigger) = trigger {
            let _ = self.sync(trigger);
        }
    }

    fn backoff(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        BACKOFF_START.saturating_mul(1 << exp).min(BACKOFF_MAX)
    }

    /// Brings the kernel up to date: incrementally when it is known to hold the previous
    /// desired table, else by dump and diff.
    fn sync(&mut self, trigger: Trigger) -> Result<(), SyncError> {
        let full = self.needs_full || trigger.is_full();
        let kind = if full {
            SyncKind::Full
        } else {
            SyncKind::Incremental
        };
        let span = tracing::info_span!(
            "sync",
            kind = kind.label(),
            trigger = trigger.as_str(),
            table = %self.cfg.table
        );
        let _enter = span.enter();
        let started = Instant::now();
        let result = if full {
            self.full_sync(trigger)
        } else {
            self.incremental_sync()
        };
        let elapsed = started.elapsed();
        let now = Instant::now();
        self.pending = None;
        match &result {
            Ok(applied) => {
                if full || applied.is_some() {
                    self.metrics.sync_observed(kind, elapsed.as_secs_f64());
                }
                if let Some((stats, report)) = applied {
                    self.metrics
                        .transactions
                        .get_or_create(&SyncLabels { kind })
                        .inc();
                    for (k, arrived) in self.arrivals.drain(..) {
                        self.metrics
                            .enforcement_latency
                            .get_or_create(&KindLabels { kind: k })
                            .observe(now.saturating_duration_since(arrived).as_secs_f64());
                    }
                    tracing::info!(
                        changes = %stats,
                        messages = report.messages,
                        bytes = report.bytes,
                        kernel_ms = ms(report.elapsed),
                        total_ms = ms(elapsed),
                        "table synced"
                    );
                } else {
                    self.arrivals.clear();
                    tracing::debug!(total_ms = ms(elapsed), "table already up to date");
                }
                self.needs_full = false;
                self.failures = 0;
                self.retry_at = None;
                if !self.initialized {
                    self.initialized = true;
                    self.health.set_initialized();
                    tracing::info!(ms = ms(elapsed), "first full sync committed; ready");
                }
                self.health.sync_ok();
            }
            Err(e) => {
                self.metrics.sync_observed(kind, elapsed.as_secs_f64());
                self.metrics
                    .transaction_failures
                    .get_or_create(&SyncLabels { kind })
                    .inc();
                self.needs_full = true;
                self.failures = self.failures.saturating_add(1);
                let backoff = self.backoff();
                self.retry_at = Some(now + backoff);
                self.health.sync_failed(&e.to_string());
                tracing::error!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "sync failed; the next sync is a full one"
                );
            }
        }
        if full {
            self.next_resync = now + self.cfg.resync_interval;
            self.next_poll = now + self.cfg.kernel_poll_interval;
            self.verify_at = None;
        }
        self.update_gauges();
        result.map(|_| ())
    }

    fn incremental_sync(
        &mut self,
    ) -> Result<Option<(crate::nft::transaction::TransactionStats, ApplyReport)>, SyncError> {
        let tx = self.compiler.commit();
        if tx.is_empty() {
            return Ok(None);
        }
        self.apply(&tx).map(|r| Some((tx.stats(), r)))
    }

    fn full_sync(
        &mut self,
        trigger: Trigger,
    ) -> Result<Option<(crate::nft::transaction::TransactionStats, ApplyReport)>, SyncError> {
        self.prune_missing_links();
        let mut retried = false;
        loop {
            // The compiler's delta is not needed: the diff against the live table replaces it.
            let _ = self.compiler.commit();
            let current = self
                .dp
                .dump(&self.cfg.table)
                .map_err(|source| SyncError::Dump {
                    table: self.cfg.table.clone(),
                    source,
                })?;
            let Some(desired) = self.compiler.table() else {
                return Ok(None);
            };
            let tx = diff::diff(current.as_ref(), desired);
            if tx.is_empty() {
                return Ok(None);
            }
            if trigger.checks_drift() && !retried {
                self.metrics.kernel_drift.inc();
                tracing::warn!(
                    table = %self.cfg.table,
                    missing = current.is_none(),
                    repair = %tx.stats(),
                    "the kernel's table differed from the desired one; repairing"
                );
            }
            match self.apply(&tx) {
                Ok(report) => return Ok(Some((tx.stats(), report))),
                Err(SyncError::Apply { source, .. })
                    if !retried && may_be_missing_device(&source) =>
                {
                    let dropped = self.prune_missing_links();
                    if dropped == 0 {
                        return Err(SyncError::Apply {
                            table: self.cfg.table.clone(),
                            stats: tx.stats().to_string(),
                            source,
                        });
                    }
                    tracing::warn!(
                        error = %source,
                        dropped,
                        "the kernel refused the table, possibly for a vanished pod interface; \
                         dropped attachments of missing interfaces and retrying"
                    );
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, SyncError> {
        self.dp.apply(tx).map_err(|source| SyncError::Apply {
            table: self.cfg.table.clone(),
            stats: tx.stats().to_string(),
            source,
        })
    }

    fn update_gauges(&self) {
        let s = self.compiler.stats();
        self.metrics.table_elements.set(s.elements as i64);
        self.metrics.table_rules.set(s.rules as i64);
        self.metrics.table_chains.set(s.chains as i64);
        self.metrics.table_sets.set(s.sets as i64);
        self.metrics.isolated_pods.set(s.isolated_pods as i64);
        self.metrics.attachments.set(self.store.len() as i64);
    }

    // ----- attachments -------------------------------------------------------------------

    /// Tells the compiler the pod's current attachment (its most recent one, or none).
    fn refresh_attachment(&mut self, key: &ObjectKey) {
        match self.store.for_pod(key) {
            Some(a) => self.compiler.upsert_attachment(key.clone(), a),
            None => self.compiler.remove_attachment(key),
        }
    }

    /// Drops attachments whose host interface no longer exists; returns how many.
    fn prune_missing_links(&mut self) -> usize {
        let links = &self.links;
        let dropped = self.store.remove_where(|a| {
            a.host_interface
                .as_deref()
                .is_some_and(|ifname| !links.exists(ifname))
        });
        if dropped.is_empty() {
            return 0;
        }
        for a in &dropped {
            tracing::info!(
                pod = %pod_key(a),
                container = %a.id.container_id,
                interface = a.host_interface.as_deref().unwrap_or(""),
                "dropping the attachment of a vanished interface"
            );
        }
        let keys: HashSet<ObjectKey> = dropped.iter().map(pod_key).collect();
        for key in keys {
            self.refresh_attachment(&key);
        }
        self.persist();
        self.metrics.attachments.set(self.store.len() as i64);
        dropped.len()
    }

    fn persist(&self) {
        if let Err(e) = self.store.save() {
            tracing::error!(error = %e, "cannot save the attachment list");
        }
    }

    // ----- CNI ---------------------------------------------------------------------------

    fn on_cni(&mut self, call: CniCall) {
        match call {
            CniCall::Add {
                attachment,
                pod,
                reply,
            } => {
                let r = self.cni_add(attachment, pod);
                let _ = reply.send(r);
            }
            CniCall::Del { attachment, reply } => {
                let r = self.cni_del(attachment);
                let _ = reply.send(r);
            }
            CniCall::Check { attachment, reply } => {
                let r = self.cni_check(attachment);
                let _ = reply.send(r);
            }
            CniCall::Gc { valid, reply } => {
                let r = self.cni_gc(valid);
                let _ = reply.send(r);
            }
        }
    }

    fn cni_add(&mut self, att: Attachment, pod: Option<Pod>) -> AddReply {
        if !self.initialized {
            return AddReply::Done(Response::error(
                CNI_TRY_AGAIN,
                "nftpol agent not ready: caches not synced yet",
                "",
            ));
        }
        if att.namespace.is_empty() || att.name.is_empty() {
            return AddReply::Done(Response::error(
                CNI_INVALID_ENV,
                "K8S_POD_NAMESPACE and K8S_POD_NAME are required in CNI_ARGS",
                "",
            ));
        }
        let key = pod_key(&att);
        let fetched = pod.is_some();
        if let Some(pod) = pod {
            if pod.key() != key {
                return AddReply::Done(Response::error(
                    CNI_TRY_AGAIN,
                    format!("fetched pod {} while adding {key}", pod.key()),
                    "",
                ));
            }
            tracing::info!(pod = %key, "using the API server's copy of the pod (the watch lags)");
            self.compiler.upsert_pod(pod);
            self.remember(ObjectId::Pod(key.clone()));
        }
        let Some(pod) = self.compiler.pod(&key) else {
            return AddReply::NeedPod;
        };
        if pod.node_name.as_deref() != Some(self.cfg.node.as_str()) {
            if !fetched {
                // The watch may not have delivered the binding (or this is a new incarnation
                // of a pod with the same name): ask the API server.
                return AddReply::NeedPod;
            }
            return AddReply::Done(Response::error(
                CNI_TRY_AGAIN,
                format!(
                    "pod {key} is scheduled to node {:?}, but this agent enforces node {}",
                    pod.node_name.as_deref().unwrap_or(""),
                    self.cfg.node
                ),
                "",
            ));
        }
        self.store.insert(att);
        self.persist();
        self.refresh_attachment(&key);
        match self.sync(Trigger::Cni) {
            Ok(()) => AddReply::Done(Response::ok()),
            Err(e) => AddReply::Done(Response::error(
                CNI_TRY_AGAIN,
                format!("could not program pod {key}'s isolation"),
                e.to_string(),
            )),
        }
    }

    fn cni_del(&mut self, att: Attachment) -> Response {
        let Some(removed) = self.store.remove(&att.id) else {
            return Response::ok();
        };
        self.persist();
        let key = pod_key(&removed);
        self.refresh_attachment(&key);
        if self.initialized
            && let Err(e) = self.sync(Trigger::Cni)
        {
            // DEL always succeeds; the failure already scheduled a full resync.
            tracing::warn!(pod = %key, error = %e, "DEL: sync failed; retrying later");
        }
        Response::ok()
    }

    fn cni_check(&mut self, att: Attachment) -> Response {
        if !self.initialized {
            return Response::error(CNI_TRY_AGAIN, "nftpol agent not ready", "");
        }
        let Some(stored) = self.store.get(&att.id) else {
            return Response::error(
                CNI_UNKNOWN_CONTAINER,
                format!(
                    "nftpol knows no attachment {}/{}",
                    att.id.container_id, att.id.ifname
                ),
                "",
            );
        };
        let key = pod_key(stored);
        let Some(expected) = self.compiler.expected_objects(&key) else {
            if self.compiler.pod(&key).is_none() {
                return Response::error(CNI_TRY_AGAIN, format!("pod {key} not known yet"), "");
            }
            // Known pod without table entries (e.g. finished): nothing to verify.
            return Response::ok();
        };
        let live = match self.dp.dump(&self.cfg.table) {
            Ok(t) => t,
            Err(e) => {
                return Response::error(
                    CNI_TRY_AGAIN,
                    format!("reading table inet {} failed", self.cfg.table),
                    e.to_string(),
                );
            }
        };
        let mut missing: Vec<String> = Vec::new();
        match &live {
            None => missing.push(format!("table inet {}", self.cfg.table)),
            Some(t) => {
                for c in &expected.chains {
                    if !t.chains.contains_key(c) {
                        missing.push(format!("chain {c}"));
                    }
                }
                let desired = self.compiler.table();
                for (set, k) in &expected.elements {
                    let want = desired
                        .and_then(|d| d.sets.get(set))
                        .and_then(|s| s.elements.get(k));
                    let have = t.sets.get(set).and_then(|s| s.elements.get(k));
                    if have.is_none() || (want.is_some() && have != want) {
                        missing.push(format!("element {k:?} of {set}"));
                    }
                }
            }
        }
        if missing.is_empty() {
            return Response::ok();
        }
        // The kernel is not what we programmed: repair it soon.
        self.verify_at
            .get_or_insert_with(|| Instant::now() + VERIFY_DELAY);
        let total = expected.chains.len() + expected.elements.len();
        let shown: Vec<String> = missing.iter().take(10).cloned().collect();
        Response::error(
            CNI_NOT_ENFORCED,
            format!(
                "pod {key}: {} of {total} table entries are missing from the kernel",
                missing.len()
            ),
            shown.join("; "),
        )
    }

    fn cni_gc(&mut self, valid: Vec<AttachmentId>) -> Response {
        let valid: HashSet<AttachmentId> = valid.into_iter().collect();
        let dropped = self.store.remove_where(|a| !valid.contains(&a.id));
        if dropped.is_empty() {
            return Response::ok();
        }
        tracing::info!(dropped = dropped.len(), "GC: forgot stale attachments");
        self.persist();
        let keys: HashSet<ObjectKey> = dropped.iter().map(pod_key).collect();
        for key in keys {
            self.refresh_attachment(&key);
        }
        if self.initialized
            && let Err(e) = self.sync(Trigger::Cni)
        {
            return Response::error(CNI_TRY_AGAIN, "GC: sync failed", e.to_string());
        }
        Response::ok()
    }
}

/// Whether a refusal may come from a base chain on a missing device (ENOENT on kernels
/// before 6.16, ENODEV from some paths).
fn may_be_missing_device(e: &DataplaneError) -> bool {
    match e {
        DataplaneError::Kernel { errno, .. } => *errno == libc::ENOENT || *errno == libc::ENODEV,
        other => other.kind() == Some(ErrorKind::Missing),
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
