//! Node agent benchmark: the release `nftpol agent`, unchanged, against the test API server
//! loaded with a synthetic cluster (`benches/synth`), programming a throw-away network
//! namespace. It prints, per cluster size:
//!
//! 1. **Policy change -> enforcement in the kernel** (medium size by default): from the API
//!    write (a NetworkPolicy created, updated or deleted so that what a local pod allows
//!    changes; a remote pod relabelled so that it leaves or joins a peer selector of a local
//!    pod's policy) to the nf_tables commit that made the change, p50/p90/p99/max per kind of
//!    change and overall, with the agent's default `--debounce` (20 ms) and with
//!    `--debounce 0` (the pipeline without the deliberate wait). Cross-checked with the
//!    agent's own `nftpol_enforcement_latency_seconds` histogram (scraped before and after).
//! 2. **Resident memory** after the agent is ready (steady state, `VmRSS`) and its peak
//!    (`VmHWM`), also with `MALLOC_ARENA_MAX=2` (do glibc's per-thread arenas matter?).
//! 3. **Time to ready**: from spawning the agent to `/readyz` answering 200, split into the
//!    initial lists (the last kind's "cache synced" log line) and the first full sync.
//!
//! # How "visible in the kernel" is measured
//!
//! The benchmark subscribes to nf_tables notifications inside the agent's namespace
//! (`nftpol_e2e::observe::nft_events`). Before each write it computes, with its own copy of
//! the compiler fed exactly the objects the API server holds (converted by the same
//! `Converter` the agent uses), which set elements, chains, sets and rules the change must
//! add or delete; the sample ends at the first commit after which every one of them has been
//! seen in notifications (normally the agent's single commit for the change). A change the
//! agent never makes, or makes differently, times out and fails the benchmark. The clock
//! starts right before the in-process API write call (which also wakes the watch streams).
//! Error: notifications leave the kernel after the new generation is live, so the figure is
//! late by the delivery delay to our reader thread (a wake-up; microseconds idle, up to a
//! scheduler slice on a busy 2-core box) and early by nothing.
//!
//! # Setup
//!
//! One network namespace per size holds everything: the API server's listener (bound by a
//! thread that entered it), the agent (`ip netns exec`), and the table. The API server's
//! threads belong to this process (the benchmark), so on the 2-core machine the agent
//! competes with the server for CPU during the initial lists, as it would with a co-located
//! control plane. Between runs the table is deleted, so every run starts from an empty
//! kernel.
//!
//! Run as root: `cargo bench -p nftpol-e2e --bench agent` (it runs `target/release/nftpol`,
//! or `NFTPOL_BIN`; build it first with `cargo build --release --bin nftpol`). Knobs
//! (environment): `AGENT_BENCH_SIZES` (`medium,large`), `AGENT_BENCH_LATENCY_SIZES`
//! (`medium`), `AGENT_BENCH_CYCLES` (60: each cycle is 5 samples), `AGENT_BENCH_REPEATS` (3
//! agent starts per size and allocator setting), `AGENT_BENCH_SETTLE_SECS` (10: wait after
//! ready before reading the steady-state memory), `AGENT_BENCH_ARENA` (1: also run with
//! `MALLOC_ARENA_MAX=2`; 0 skips), `AGENT_BENCH_EXTRA_ENV` (`K=V,...` for every agent run),
//! `AGENT_BENCH_DEBOUNCES` (`default,0`), `AGENT_BENCH_WRAPPER` (a profiler command put in
//! front of the agent, e.g. `heaptrack -o /tmp/agent`; memory figures are then the
//! wrapper's), `AGENT_BENCH_TRACE` (print every commit's changes and the kernel's elements).

#[path = "../../benches/synth/mod.rs"]
mod synth;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use nftpol::core::cluster::ObjectKey;
use nftpol::core::compile::{Compiler, Config};
use nftpol::core::convert::Converter;
use nftpol::nft::model::{Key, KeyPart};
use nftpol::nft::transaction::Transaction;
use nftpol_e2e::apiserver::{Kind, Server};
use nftpol_e2e::netns::unique_name;
use nftpol_e2e::observe::nft_events::{self, Change, Event, Monitor, ObjectKind, TableFilter};
use nftpol_e2e::observe::procfs::{Memory, mib};
use nftpol_e2e::observe::prom::Histogram;
use nftpol_e2e::observe::{HttpResponse, http_get};
use nftpol_e2e::{Netns, Process};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

const TABLE: &str = "nftpol";
const ENGINE_THREAD: &str = "nftpol-engine";
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(600);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ---- sizes ------------------------------------------------------------------------------

struct Size {
    label: &'static str,
    spec: synth::Spec,
}

fn sizes() -> Vec<Size> {
    let wanted = env_list("AGENT_BENCH_SIZES", "medium,large");
    let all = [
        Size {
            label: "medium",
            spec: synth::Spec {
                pods: 10_000,
                namespaces: 1_000,
                policies: 1_000,
                local_pods: 110,
            },
        },
        Size {
            label: "large",
            spec: synth::Spec {
                pods: 150_000,
                namespaces: 10_000,
                policies: 10_000,
                local_pods: 110,
            },
        },
    ];
    all.into_iter()
        .filter(|s| wanted.iter().any(|w| w == s.label))
        .collect()
}

// ---- the environment: a namespace with the API server in it ------------------------------

struct Setup {
    ns: Netns,
    server: Option<Server>,
    dir: PathBuf,
    bin: PathBuf,
    runs: usize,
}

impl Setup {
    fn new(size: &Size, bin: &Path) -> Result<Setup> {
        let ns = Netns::create(&unique_name("agent-bench", size.label))?;
        let dir = std::env::temp_dir().join(format!(
            "nftpol-agent-bench-{}-{}",
            std::process::id(),
            size.label
        ));
        std::fs::create_dir_all(&dir)?;
        let listener = ns
            .spawn("bind-apiserver", || TcpListener::bind("127.0.0.1:0"))?
            .join()
            .map_err(|_| "the bind thread panicked")??;
        let server = Server::builder()
            .kubeconfig_dir(&dir)
            .listener(listener)
            .start()?;
        let t = Instant::now();
        let g = synth::generate(&size.spec);
        let list = synth::to_kube_list(&g);
        drop(g);
        let items = match list {
            Value::Object(mut m) => match m.remove("items") {
                Some(Value::Array(items)) => items,
                _ => return Err("synth list without items".into()),
            },
            _ => return Err("synth list is not an object".into()),
        };
        let n = items.len();
        server.create_all(items)?;
        let stats = server.stats();
        println!(
            "   API server in netns {}: {} objects ({:.0} MB of JSON) loaded in {:.1} s",
            ns.name(),
            n,
            stats.json_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        Ok(Setup {
            ns,
            server: Some(server),
            dir,
            bin: bin.to_path_buf(),
            runs: 0,
        })
    }

    fn server(&self) -> &Server {
        match &self.server {
            Some(s) => s,
            None => unreachable!("the server lives as long as the setup"),
        }
    }

    /// `GET path` on the agent's HTTP server, from inside the namespace.
    fn get(&self, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
        let path = path.to_string();
        Ok(self
            .ns
            .run(move || http_get(addr, &path, Duration::from_secs(5)))??)
    }

    /// Starts an agent on an empty kernel and waits until it is ready.
    fn start_agent(
        &mut self,
        label: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<AgentRun> {
        // Every run starts from an empty kernel.
        let _ = self.ns.exec("nft", ["delete", "table", "inet", TABLE]);
        self.runs += 1;
        let state = self.dir.join(format!("run-{}", self.runs));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state)?;
        // A profiler in front of the agent (`AGENT_BENCH_WRAPPER="heaptrack -o /tmp/ht"`):
        // then the pid, and so the memory figures, are the wrapper's.
        let wrapper: Vec<String> = std::env::var("AGENT_BENCH_WRAPPER")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = self.ns.command(program);
                c.args(rest).arg(&self.bin);
                c
            }
            None => self.ns.command(&self.bin),
        };
        cmd.arg("agent")
            .args(["--node-name", synth::LOCAL_NODE])
            .arg("--kubeconfig")
            .arg(self.server().kubeconfig_path())
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(state.join("nftpol.sock"))
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let own_cpu0 = cpu_time(std::process::id());
        let started = Instant::now();
        let process = self.ns.start(label, cmd)?;
        let mut phases = LogPhases::default();
        let mut metrics = None;
        let mut log_offset = 0;
        let deadline = started + READY_TIMEOUT;
        let ready_at = loop {
            if !process.is_running() {
                return Err(format!(
                    "agent {label} exited before ready: {:?}\n{}",
                    process.exit_status(),
                    process.stderr()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("agent {label} not ready after {READY_TIMEOUT:?}").into());
            }
            let log = process.stderr();
            if log.len() > log_offset {
                let complete = log[log_offset..].rfind('\n').map_or(0, |i| i + 1);
                phases.scan(&log[log_offset..log_offset + complete], process.pid());
                log_offset += complete;
            }
            if metrics.is_none()
                && let Ok(text) = std::fs::read_to_string(state.join("metrics-addr"))
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                metrics = Some(addr);
            }
            if let Some(addr) = metrics
                && let Ok(r) = self.get(addr, "/readyz")
                && r.status == 200
            {
                break Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let agent_cpu = cpu_time(process.pid()).unwrap_or_default();
        let own_cpu = match (own_cpu0, cpu_time(std::process::id())) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        let log = process.stderr();
        phases.scan(&log[log_offset..], process.pid());
        let metrics = metrics.ok_or("no metrics address")?;
        Ok(AgentRun {
            process,
            metrics,
            started,
            ready: ready_at - started,
            phases,
            agent_cpu,
            server_cpu: own_cpu,
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The server's shutdown wakes its accept loop by connecting to its own address, which
        // only works from inside the namespace.
        if let Some(server) = self.server.take() {
            let _ = self.ns.run(move || server.shutdown());
        }
        let _ = self.ns.delete();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the agent's log says about its start, timed when the benchmark read the lines
/// (every 10 ms).
#[derive(Default, Debug)]
struct LogPhases {
    /// When each kind's "cache synced" line was seen.
    synced: BTreeMap<String, Instant>,
    /// Resident memory when the last kind synced (before the first full sync).
    rss_at_synced: Option<Memory>,
    /// The first full sync's duration, from the agent's "ready" line.
    first_sync_ms: Option<f64>,
    errors: Vec<String>,
}

impl LogPhases {
    fn scan(&mut self, text: &str, pid: u32) {
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let fields = &v["fields"];
            let message = fields["message"].as_str().unwrap_or("");
            match message {
                "cache synced" => {
                    let kind = fields["kind"].as_str().unwrap_or("?").to_string();
                    self.synced.entry(kind).or_insert_with(Instant::now);
                    if self.synced.len() == 4 && self.rss_at_synced.is_none() {
                        self.rss_at_synced = Memory::of(pid).ok();
                    }
                }
                "first full sync committed; ready" => {
                    self.first_sync_ms = fields["ms"].as_f64();
                }
                _ => {}
            }
            if matches!(v["level"].as_str(), Some("ERROR" | "WARN")) {
                self.errors.push(line.to_string());
            }
        }
    }

    fn lists_done(&self) -> Option<Instant> {
        (self.synced.len() == 4).then(|| self.synced.values().max().copied())?
    }
}

struct AgentRun {
    process: Arc<Process>,
    metrics: SocketAddr,
    started: Instant,
    ready: Duration,
    phases: LogPhases,
    /// CPU the agent used until ready.
    agent_cpu: Duration,
    /// CPU this process (the API server) used meanwhile.
    server_cpu: Duration,
}

impl Drop for AgentRun {
    /// Stops the agent now: the namespace also holds the process (to stop it at teardown),
    /// and two agents must never program the same table.
    fn drop(&mut self) {
        // Under a wrapper (a profiler script) the agent is its child: SIGTERM it first, so
        // that it shuts down cleanly and the profiler writes its data.
        let pid = self.process.pid();
        let children: Vec<i32> =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect();
        for child in &children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*child),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while children
            .iter()
            .any(|c| Path::new(&format!("/proc/{c}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = self.process.stop() {
            eprintln!("cannot stop {}: {e}", self.process.label());
        }
    }
}

impl AgentRun {
    fn lists(&self) -> Option<Duration> {
        self.phases.lists_done().map(|t| t - self.started)
    }
}

// ---- the oracle: what a change must do to the table --------------------------------------

/// The compiler, fed the same objects as the agent through the same converter.
struct Replica {
    compiler: Compiler,
    converter: Converter,
}

impl Replica {
    fn load(server: &Server) -> Result<Replica> {
        let mut r = Replica {
            compiler: Compiler::new(Config::new(synth::LOCAL_NODE)),
            converter: Converter::new(),
        };
        for v in server.objects(Kind::Namespace) {
            let ns: corev1::Namespace = serde_json::from_value(v)?;
            r.compiler.upsert_namespace(r.converter.namespace(&ns)?);
        }
        for v in server.objects(Kind::Node) {
            let n: corev1::Node = serde_json::from_value(v)?;
            r.compiler.upsert_node(r.converter.node(&n)?);
        }
        for v in server.objects(Kind::Pod) {
            r.upsert_pod(&v)?;
        }
        for v in server.objects(Kind::NetworkPolicy) {
            r.upsert_policy(&v)?;
        }
        let _ = r.compiler.commit();
        Ok(r)
    }

    fn upsert_pod(&mut self, v: &Value) -> Result<()> {
        let p: corev1::Pod = serde_json::from_value(v.clone())?;
        self.compiler.upsert_pod(self.converter.pod(&p)?);
        Ok(())
    }

    fn upsert_policy(&mut self, v: &Value) -> Result<()> {
        let p: netv1::NetworkPolicy = serde_json::from_value(v.clone())?;
        self.compiler
            .upsert_policy(self.converter.network_policy(&p)?);
        Ok(())
    }
}

/// Something a commit must show for a change to be complete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Witness {
    Element {
        added: bool,
        set: String,
        key: Vec<u8>,
    },
    Object {
        added: bool,
        kind: ObjectKind,
        name: String,
    },
}

impl Witness {
    fn of(change: &Change) -> Option<Witness> {
        match change {
            Change::Element {
                added,
                set,
                key,
                key_end: None,
                ..
            } => Some(Witness::Element {
                added: *added,
                set: set.clone(),
                key: key.clone(),
            }),
            Change::Element { .. } => None,
            Change::Object {
                added, kind, name, ..
            } => Some(Witness::Object {
                added: *added,
                kind: *kind,
                name: name.clone(),
            }),
        }
    }
}

/// The kernel's bytes of a key without ranges (this benchmark's own encoding, written from
/// the nf_tables key layout: a single field unpadded, each field of a concatenation padded to
/// 4 bytes, network byte order). `None` for keys with ranges (interval sets store those as
/// start/end pairs); they are not used as witnesses.
fn key_bytes(key: &Key) -> Option<Vec<u8>> {
    let concat = key.0.len() > 1;
    let mut out = Vec::new();
    for part in &key.0 {
        let mut field = match part {
            KeyPart::V4(a) => a.octets().to_vec(),
            KeyPart::V6(a) => a.octets().to_vec(),
            KeyPart::Proto(p) | KeyPart::NfProto(p) | KeyPart::Icmpv6Type(p) => vec![*p],
            KeyPart::Port(p) => p.to_be_bytes().to_vec(),
            KeyPart::Ifname(n) => {
                let mut b = n.as_bytes().to_vec();
                b.resize(16, 0);
                b
            }
            KeyPart::V4Range(..) | KeyPart::V6Range(..) | KeyPart::PortRange(..) => return None,
        };
        if concat {
            while field.len() % 4 != 0 {
                field.push(0);
            }
        }
        out.extend(field);
    }
    Some(out)
}

/// Everything a transaction must make appear in notifications.
fn witnesses(tx: &Transaction) -> HashSet<Witness> {
    let mut w = HashSet::new();
    for (set, keys) in &tx.delete_elements {
        for k in keys {
            if let Some(key) = key_bytes(k) {
                w.insert(Witness::Element {
                    added: false,
                    set: set.to_string(),
                    key,
                });
            }
        }
    }
    for (set, elems) in &tx.add_elements {
        for (k, _) in elems {
            if let Some(key) = key_bytes(k) {
                w.insert(Witness::Element {
                    added: true,
                    set: set.to_string(),
                    key,
                });
            }
        }
    }
    let obj = |added, kind, name: &str| Witness::Object {
        added,
        kind,
        name: name.to_string(),
    };
    for c in &tx.add_chains {
        w.insert(obj(true, ObjectKind::Chain, &c.name));
    }
    for c in &tx.delete_chains {
        w.insert(obj(false, ObjectKind::Chain, c));
    }
    for s in &tx.add_sets {
        w.insert(obj(true, ObjectKind::Set, &s.name));
    }
    for s in &tx.delete_sets {
        w.insert(obj(false, ObjectKind::Set, s));
    }
    for (chain, rules) in &tx.add_rules {
        if !rules.is_empty() {
            w.insert(obj(true, ObjectKind::Rule, chain));
        }
    }
    w
}

/// One line per change, for traces.
fn brief(ch: &Change) -> String {
    match ch {
        Change::Element {
            added, set, key, ..
        } => {
            let port = if key.len() == 16 {
                format!(" port {}", u16::from_be_bytes([key[12], key[13]]))
            } else {
                String::new()
            };
            format!("{} {set} {key:?}{port}", if *added { "+" } else { "-" })
        }
        Change::Object {
            added, kind, name, ..
        } => {
            format!("{} {kind:?} {name}", if *added { "+" } else { "-" })
        }
    }
}

// ---- latency ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ChangeKind {
    PolicyCreate,
    PolicyUpdate,
    PolicyDelete,
    PodLeaves,
    PodJoins,
}

impl ChangeKind {
    fn label(self) -> &'static str {
        match self {
            ChangeKind::PolicyCreate => "policy created",
            ChangeKind::PolicyUpdate => "policy updated (port)",
            ChangeKind::PolicyDelete => "policy deleted",
            ChangeKind::PodLeaves => "pod relabelled out of a selector",
            ChangeKind::PodJoins => "pod relabelled into a selector",
        }
    }
}

struct Sample {
    kind: ChangeKind,
    latency: Duration,
    /// Engine commits it took (1 when the change went out in one transaction).
    commits: usize,
    witnesses: usize,
}

/// A local pod a benchmark policy selects.
#[derive(Debug, Clone)]
struct LocalPod {
    namespace: String,
    labels: serde_json::Map<String, Value>,
}

/// A remote pod whose relabelling changes what a local pod allows.
#[derive(Debug, Clone)]
struct PeerPod {
    namespace: String,
    name: String,
}

struct LatencyRun<'a> {
    setup: &'a Setup,
    replica: &'a mut Replica,
    monitor: Monitor,
    samples: Vec<Sample>,
    stray_commits: usize,
    overflows: usize,
}

impl LatencyRun<'_> {
    /// Prints what the kernel holds for the local pods of missing element changes (what
    /// one needs to see when the agent did not do what the replica expected).
    fn explain(&self, pending: &HashSet<Witness>) {
        let mut shown = HashSet::new();
        for w in pending {
            let Witness::Element { set, key, .. } = w else {
                continue;
            };
            let Some(ip) = key.get(..4) else { continue };
            let ip = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
            if !shown.insert((set.clone(), ip.clone())) {
                continue;
            }
            let listed = ["map", "set"].iter().find_map(|what| {
                self.setup
                    .ns
                    .exec("nft", ["list", what, "inet", TABLE, set])
                    .ok()
                    .filter(|o| o.success())
            });
            match listed {
                Some(out) => {
                    let lines: Vec<&str> = out
                        .stdout
                        .split([',', '\n'])
                        .filter(|l| {
                            l.contains(&format!("{ip} . "))
                                || l.trim_start().starts_with(&format!("{ip} :"))
                        })
                        .take(40)
                        .collect();
                    eprintln!(
                        "kernel elements of {set} for local {ip}:\n  {}",
                        lines.join("\n  ")
                    );
                }
                None => eprintln!("cannot list {set}"),
            }
        }
    }

    /// Applies `change` to the replica, writes it to the API server, and waits until the
    /// kernel shows all of it.
    fn sample(
        &mut self,
        kind: ChangeKind,
        write: impl FnOnce(&Server) -> Result<()>,
        expected: Transaction,
    ) -> Result<()> {
        let mut pending = witnesses(&expected);
        if pending.is_empty() {
            return Err(format!(
                "{}: the change does nothing to the table ({})",
                kind.label(),
                expected.stats()
            )
            .into());
        }
        let total = pending.len();
        for e in self.monitor.drain() {
            match e {
                Event::Commit(_) => self.stray_commits += 1,
                Event::Overflow(_) => self.overflows += 1,
                Event::Failed(f) => return Err(format!("notifications failed: {f}").into()),
            }
        }
        let t0 = Instant::now();
        write(self.setup.server())?;
        let deadline = t0 + SAMPLE_TIMEOUT;
        let mut commits = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.monitor.next(left) {
                Some(Event::Commit(c)) => {
                    if c.process != ENGINE_THREAD {
                        continue;
                    }
                    commits += 1;
                    if std::env::var_os("AGENT_BENCH_TRACE").is_some() {
                        eprintln!("{} commit after {:.1} ms:", kind.label(), ms(c.seen - t0));
                        for ch in &c.changes {
                            eprintln!("   {}", brief(ch));
                        }
                    }
                    for ch in &c.changes {
                        if let Some(w) = Witness::of(ch) {
                            pending.remove(&w);
                        }
                    }
                    if pending.is_empty() {
                        self.samples.push(Sample {
                            kind,
                            latency: c.seen.saturating_duration_since(t0),
                            commits,
                            witnesses: total,
                        });
                        if std::env::var_os("AGENT_BENCH_TRACE").is_some() {
                            std::thread::sleep(Duration::from_millis(200));
                            for e in self.monitor.drain() {
                                if let Event::Commit(c) = e {
                                    eprintln!(
                                        "   LATE commit by {}: {} changes",
                                        c.process,
                                        c.changes.len()
                                    );
                                    for ch in &c.changes {
                                        eprintln!("      {}", brief(ch));
                                    }
                                }
                            }
                            self.explain(&witnesses(&expected));
                        }
                        return Ok(());
                    }
                }
                Some(Event::Overflow(_)) => {
                    self.overflows += 1;
                    return Ok(());
                }
                Some(Event::Failed(f)) => return Err(format!("notifications failed: {f}").into()),
                None => {
                    self.explain(&pending);
                    eprintln!("expected transaction: {}", expected.stats());
                    let shown: Vec<String> =
                        pending.iter().take(5).map(|w| format!("{w:?}")).collect();
                    return Err(format!(
                        "{}: {} of {total} expected changes not seen in the kernel within {SAMPLE_TIMEOUT:?} \
                         ({commits} engine commits meanwhile), e.g. {}",
                        kind.label(),
                        pending.len(),
                        shown.join("; ")
                    )
                    .into());
                }
            }
        }
    }
}

fn local_pods(server: &Server) -> Vec<LocalPod> {
    server
        .objects(Kind::Pod)
        .into_iter()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(synth::LOCAL_NODE))
        .filter_map(|p| {
            Some(LocalPod {
                namespace: p.pointer("/metadata/namespace")?.as_str()?.to_string(),
                labels: p.pointer("/metadata/labels")?.as_object()?.clone(),
            })
        })
        .collect()
}

fn relabelled(pod: &Value, out: bool, original: &Value) -> Value {
    let mut p = pod.clone();
    if out {
        p["metadata"]["labels"]["app"] = json!("other");
        p["metadata"]["labels"]["tier"] = json!("other");
    } else {
        p["metadata"]["labels"] = original["metadata"]["labels"].clone();
    }
    p
}

/// Remote pods in the local pods' namespaces whose relabelling (`app`, `tier` = `other`)
/// changes the table, found with the replica (which is left as it was).
fn peer_pods(
    server: &Server,
    replica: &mut Replica,
    locals: &[LocalPod],
    want: usize,
) -> Result<Vec<PeerPod>> {
    let namespaces: HashSet<&str> = locals.iter().map(|l| l.namespace.as_str()).collect();
    let mut found = Vec::new();
    let mut seen_ns = HashSet::new();
    for pod in server.objects(Kind::Pod) {
        if found.len() >= want {
            break;
        }
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node == synth::LOCAL_NODE || !namespaces.contains(ns) || seen_ns.contains(ns) {
            continue;
        }
        replica.upsert_pod(&relabelled(&pod, true, &pod))?;
        let tx = replica.compiler.commit();
        replica.upsert_pod(&pod)?;
        let _ = replica.compiler.commit();
        let elements = witnesses(&tx)
            .iter()
            .filter(|w| matches!(w, Witness::Element { .. }))
            .count();
        if elements > 0 {
            // One pod per namespace: spread the samples over different policies.
            seen_ns.insert(ns.to_string());
            found.push(PeerPod {
                namespace: ns.to_string(),
                name: pod
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            });
        }
    }
    if found.is_empty() {
        return Err("no remote pod is a peer of a local pod's policy".into());
    }
    Ok(found)
}

fn bench_policy(local: &LocalPod, j: usize, port: u32) -> Value {
    let mut selector = serde_json::Map::new();
    for k in ["app", "pod-template-hash"] {
        if let Some(v) = local.labels.get(k) {
            selector.insert(k.to_string(), v.clone());
        }
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "namespace": local.namespace, "name": format!("bench-{j}") },
        "spec": {
            "podSelector": { "matchLabels": selector },
            "policyTypes": ["Ingress"],
            "ingress": [{ "from": [{ "podSelector": {} }], "ports": [{ "protocol": "TCP", "port": port }] }]
        }
    })
}

struct LatencyReport {
    samples: Vec<Sample>,
    stray_commits: usize,
    overflows: usize,
    agent_hist: Option<Histogram>,
    agent_sync: Option<Histogram>,
}

fn scrape(setup: &Setup, run: &AgentRun) -> Result<String> {
    let r = setup.get(run.metrics, "/metrics")?;
    if r.status != 200 {
        return Err(format!("/metrics answered {}", r.status).into());
    }
    Ok(r.body)
}

fn measure_latency(
    setup: &Setup,
    run: &AgentRun,
    replica: &mut Replica,
    cycles: usize,
) -> Result<LatencyReport> {
    let server = setup.server();
    let locals = local_pods(server);
    if locals.is_empty() {
        return Err("no local pods".into());
    }
    let peers = peer_pods(server, replica, &locals, cycles)?;
    let monitor = Monitor::start(
        &setup.ns,
        Some(TableFilter {
            family: nft_events::family::INET,
            name: TABLE.into(),
        }),
    )?;
    let before = scrape(setup, run)?;
    let mut lr = LatencyRun {
        setup,
        replica,
        monitor,
        samples: Vec::new(),
        stray_commits: 0,
        overflows: 0,
    };
    // Deterministic pauses of 40-100 ms between writes: the agent is idle when a change
    // arrives, and writes do not fall into a fixed phase with the agent's 1 s tick.
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pause = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 61));
    };
    for j in 0..cycles {
        let local = &locals[(j * 7) % locals.len()];
        let peer = &peers[j % peers.len()];
        let name = format!("bench-{j}");

        let created = bench_policy(local, j, 20_000 + j as u32);
        lr.replica.upsert_policy(&created)?;
        let tx = lr.replica.compiler.commit();
        lr.sample(
            ChangeKind::PolicyCreate,
            |s| Ok(s.create(created).map(drop)?),
            tx,
        )?;
        pause();

        let pod = server
            .get(Kind::Pod, Some(&peer.namespace), &peer.name)
            .ok_or("peer pod vanished")?;
        let out = relabelled(&pod, true, &pod);
        lr.replica.upsert_pod(&out)?;
        let tx = lr.replica.compiler.commit();
        lr.sample(ChangeKind::PodLeaves, |s| Ok(s.update(out).map(drop)?), tx)?;
        pause();

        let updated = bench_policy(local, j, 40_000 + j as u32);
        lr.replica.upsert_policy(&updated)?;
        let tx = lr.replica.compiler.commit();
        lr.sample(
            ChangeKind::PolicyUpdate,
            |s| Ok(s.update(updated).map(drop)?),
            tx,
        )?;
        pause();

        let current = server
            .get(Kind::Pod, Some(&peer.namespace), &peer.name)
            .ok_or("peer pod vanished")?;
        let back = relabelled(&current, false, &pod);
        lr.replica.upsert_pod(&back)?;
        let tx = lr.replica.compiler.commit();
        lr.sample(ChangeKind::PodJoins, |s| Ok(s.update(back).map(drop)?), tx)?;
        pause();

        lr.replica
            .compiler
            .remove_policy(&ObjectKey::new(local.namespace.as_str(), name.as_str()));
        let tx = lr.replica.compiler.commit();
        let ns = local.namespace.clone();
        lr.sample(
            ChangeKind::PolicyDelete,
            move |s| Ok(s.delete(Kind::NetworkPolicy, Some(&ns), &name).map(drop)?),
            tx,
        )?;
        pause();
    }
    // Let the last sync's metrics land.
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape(setup, run)?;
    let hist = |text: &str, name: &str, kind: Option<&str>| {
        Histogram::parse(text, name, |labels| {
            kind.is_none_or(|k| labels.iter().any(|(l, v)| l == "kind" && v == k))
        })
    };
    let lat_name = "nftpol_enforcement_latency_seconds";
    let sync_name = "nftpol_sync_duration_seconds";
    let agent_hist = match (hist(&after, lat_name, None), hist(&before, lat_name, None)) {
        (Some(a), Some(b)) => Some(a.since(&b)),
        (Some(a), None) => Some(a),
        _ => None,
    };
    let agent_sync = match (
        hist(&after, sync_name, Some("incremental")),
        hist(&before, sync_name, Some("incremental")),
    ) {
        (Some(a), Some(b)) => Some(a.since(&b)),
        (Some(a), None) => Some(a),
        _ => None,
    };
    check_table_size(&after, &lr.replica.compiler)?;
    Ok(LatencyReport {
        samples: lr.samples,
        stray_commits: lr.stray_commits,
        overflows: lr.overflows,
        agent_hist,
        agent_sync,
    })
}

/// The agent's table gauges must equal the replica's table: same objects, same result.
fn check_table_size(metrics: &str, compiler: &Compiler) -> Result<()> {
    let gauge = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let s = compiler.stats();
    let pairs = [
        ("nftpol_table_elements", s.elements),
        ("nftpol_table_rules", s.rules),
        ("nftpol_table_chains", s.chains),
        ("nftpol_table_sets", s.sets),
    ];
    for (name, want) in pairs {
        let have = gauge(name).ok_or_else(|| format!("no gauge {name}"))?;
        if have as usize != want {
            return Err(
                format!("agent reports {name} = {have}, the replica compiled {want}").into(),
            );
        }
    }
    Ok(())
}

fn print_latency(title: &str, r: &LatencyReport) {
    println!("   -- {title}: {} samples", r.samples.len());
    let mut kinds: Vec<ChangeKind> = r.samples.iter().map(|s| s.kind).collect();
    kinds.sort();
    kinds.dedup();
    let line = |label: &str, v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().map(|d| d.as_secs_f64()).sum::<f64>() / v.len().max(1) as f64;
        println!(
            "      {label:<34} n={:<4} p50 {:>6.1} ms  p90 {:>6.1}  p99 {:>6.1}  max {:>6.1}  mean {:>6.1}",
            v.len(),
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.9)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap_or(&Duration::ZERO)),
            mean * 1e3
        );
    };
    for k in &kinds {
        let mut v: Vec<Duration> = r
            .samples
            .iter()
            .filter(|s| s.kind == *k)
            .map(|s| s.latency)
            .collect();
        line(k.label(), &mut v);
    }
    let mut all: Vec<Duration> = r.samples.iter().map(|s| s.latency).collect();
    line("ALL", &mut all);
    let multi = r.samples.iter().filter(|s| s.commits > 1).count();
    let wit: usize = r.samples.iter().map(|s| s.witnesses).sum();
    println!(
        "      kernel changes checked per sample: {:.1} on average; samples needing >1 commit: {multi}; \
         stray commits between samples: {}; notification overflows: {}",
        wit as f64 / r.samples.len().max(1) as f64,
        r.stray_commits,
        r.overflows
    );
    if let Some(h) = &r.agent_hist {
        println!(
            "      agent's nftpol_enforcement_latency_seconds (watch event arrival -> commit), {} observations: \
             mean {:.1} ms, p50 ~{:.1} ms (bucket <= {:.0}), p99 ~{:.1} ms (bucket <= {:.0})",
            h.count,
            h.mean() * 1e3,
            h.quantile(0.5) * 1e3,
            h.quantile_bound(0.5) * 1e3,
            h.quantile(0.99) * 1e3,
            h.quantile_bound(0.99) * 1e3
        );
    }
    if let Some(h) = &r.agent_sync {
        println!(
            "      agent's incremental nftpol_sync_duration_seconds, {} syncs: mean {:.2} ms, p99 ~{:.2} ms",
            h.count,
            h.mean() * 1e3,
            h.quantile(0.99) * 1e3
        );
    }
}

// ---- main ---------------------------------------------------------------------------------

struct StartFigures {
    ready: f64,
    lists: f64,
    first_sync: f64,
    rss: f64,
    hwm: f64,
    anon: f64,
    rss_synced: f64,
    agent_cpu: f64,
    server_cpu: f64,
}

fn extra_env() -> Vec<(String, String)> {
    env_list("AGENT_BENCH_EXTRA_ENV", "")
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn start_and_measure(
    setup: &mut Setup,
    label: &str,
    args: &[&str],
    env: &[(String, String)],
    settle: Duration,
) -> Result<(AgentRun, StartFigures)> {
    let run = setup.start_agent(label, args, env)?;
    std::thread::sleep(settle);
    if !run.process.is_running() {
        return Err(format!("agent {label} died after ready:\n{}", run.process.stderr()).into());
    }
    let mem = Memory::of(run.process.pid())?;
    let f = StartFigures {
        ready: run.ready.as_secs_f64(),
        lists: run.lists().map_or(f64::NAN, |d| d.as_secs_f64()),
        first_sync: run.phases.first_sync_ms.unwrap_or(f64::NAN) / 1e3,
        rss: mib(mem.rss),
        hwm: mib(mem.hwm),
        anon: mib(mem.rss_anon),
        rss_synced: run.phases.rss_at_synced.map_or(f64::NAN, |m| mib(m.rss)),
        agent_cpu: run.agent_cpu.as_secs_f64(),
        server_cpu: run.server_cpu.as_secs_f64(),
    };
    println!(
        "      {label}: ready {:.2} s (lists {:.2} s, first full sync {:.2} s by its log); CPU until ready: agent {:.1} s, \
         API server {:.1} s; RSS at caches synced {:.0} MiB, after {}s settle {:.0} MiB (anon {:.0}), peak {:.0} MiB; load {}",
        f.ready,
        f.lists,
        f.first_sync,
        f.agent_cpu,
        f.server_cpu,
        f.rss_synced,
        settle.as_secs(),
        f.rss,
        f.anon,
        f.hwm,
        loadavg()
    );
    for e in run.phases.errors.iter().take(3) {
        println!("      agent log: {e}");
    }
    Ok((run, f))
}

fn summarize(label: &str, figs: &[StartFigures]) {
    if figs.is_empty() {
        return;
    }
    let med = |f: fn(&StartFigures) -> f64| median(&mut figs.iter().map(f).collect::<Vec<_>>());
    let max = |f: fn(&StartFigures) -> f64| figs.iter().map(f).fold(f64::NAN, f64::max);
    println!(
        "   == {label} (median of {}): ready {:.2} s (lists {:.2} s + first sync {:.2} s); steady RSS {:.0} MiB \
         (max {:.0}), peak VmHWM {:.0} MiB (max {:.0})",
        figs.len(),
        med(|f| f.ready),
        med(|f| f.lists),
        med(|f| f.first_sync),
        med(|f| f.rss),
        max(|f| f.rss),
        med(|f| f.hwm),
        max(|f| f.hwm)
    );
}

fn run() -> Result<()> {
    let bin = match std::env::var_os("NFTPOL_BIN") {
        Some(p) => PathBuf::from(p),
        None => nftpol_e2e::workspace_binary("nftpol")?,
    };
    let repeats = env_num("AGENT_BENCH_REPEATS", 3).max(1) as usize;
    let cycles = env_num("AGENT_BENCH_CYCLES", 60).max(1) as usize;
    let settle = Duration::from_secs(env_num("AGENT_BENCH_SETTLE_SECS", 10));
    let arena = env_num("AGENT_BENCH_ARENA", 1) == 1;
    let latency_sizes = env_list("AGENT_BENCH_LATENCY_SIZES", "medium");
    let debounces = env_list("AGENT_BENCH_DEBOUNCES", "default,0");
    let env = extra_env();
    println!(
        "nftpol agent benchmark: {} ({} cores), load average {}, extra env {:?}",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        env
    );
    for size in sizes() {
        println!(
            "== {}: {} pods, {} namespaces, {} policies, {} pods on {}",
            size.label,
            size.spec.pods,
            size.spec.namespaces,
            size.spec.policies,
            size.spec.local_pods,
            synth::LOCAL_NODE
        );
        let mut setup = Setup::new(&size, &bin)?;
        let mut plain = Vec::new();
        let mut arenas = Vec::new();
        let wants_latency = latency_sizes.iter().any(|l| l == size.label);
        // Only one agent runs at a time: each run is stopped before the next one starts.
        for r in 0..repeats {
            let (run, f) = start_and_measure(
                &mut setup,
                &format!("agent-{}-{r}", size.label),
                &[],
                &env,
                settle,
            )?;
            plain.push(f);
            if r == 0 && wants_latency {
                let mut replica = Replica::load(setup.server())?;
                if debounces.iter().any(|d| d == "default") {
                    let report = measure_latency(&setup, &run, &mut replica, cycles)?;
                    print_latency(
                        &format!("{} latency, default --debounce (20ms)", size.label),
                        &report,
                    );
                }
                drop(run);
                for d in debounces.iter().filter(|d| *d != "default") {
                    let (run, _) = start_and_measure(
                        &mut setup,
                        &format!("agent-{}-debounce-{d}", size.label),
                        &["--debounce", d],
                        &env,
                        Duration::from_secs(1),
                    )?;
                    let report = measure_latency(&setup, &run, &mut replica, cycles)?;
                    print_latency(&format!("{} latency, --debounce {d}", size.label), &report);
                }
            }
        }
        if arena {
            let mut env2 = env.clone();
            env2.push(("MALLOC_ARENA_MAX".into(), "2".into()));
            for r in 0..repeats {
                let (_run, f) = start_and_measure(
                    &mut setup,
                    &format!("agent-{}-arena2-{r}", size.label),
                    &[],
                    &env2,
                    settle,
                )?;
                arenas.push(f);
            }
        }
        summarize(&format!("{} default allocator", size.label), &plain);
        if arena {
            summarize(&format!("{} MALLOC_ARENA_MAX=2", size.label), &arenas);
        }
        println!("   load average after {}: {}", size.label, loadavg());
    }
    Ok(())
}

fn main() {
    if !nftpol_e2e::is_root() {
        eprintln!(
            "\n!!! SKIPPED agent benchmark: needs root (network namespaces, nftables). Run as root. !!!\n"
        );
        return;
    }
    if let Err(e) = run() {
        eprintln!("agent benchmark failed: {e}");
        std::process::exit(1);
    }
}
