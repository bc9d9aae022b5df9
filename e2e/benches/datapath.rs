//! Datapath benchmark: what nftpol's table costs the packets of two pods on one node.
//!
//! The targets: with 1 000 policy rules selecting the destination pod, new TCP
//! connections per second stay at >= 0.9 and throughput at >= 0.95 of the rate without any
//! nftpol table. The design (ARCHITECTURE.md) promises that: a new connection does a fixed
//! number of map lookups whatever the number of policies, and established packets stop at the
//! first rule (`ct state established,related tcp flags != syn / syn,ack accept`; other
//! protocols at the second).
//!
//! Setup: an IPv4 cluster of the e2e harness (real bridge + host-local CNI, br_netfilter on)
//! with one node per variant, so that every variant's table is installed once and runs can be
//! interleaved tightly without reprogramming anything in between. Node `i` runs pods
//! `bench/client-i`, `bench/server-i` (and `bench/other-i`, which no policy allows, to check
//! that the table really enforces), all on the node's bridge. Variants:
//!
//! - `none` (node-0): no nftpol table at all (the node then has no conntrack hooks either);
//! - `ct-only` (node-1): a table of the benchmark's own holding only `ct state
//!   established,related accept` in a forward chain: conntrack's own cost, the practical
//!   ceiling;
//! - `1 rule` (node-2): `nftpol apply` of one NetworkPolicy selecting the server and allowing
//!   the client (`bench/np-0999`);
//! - `1000 rules` (node-3): `nftpol apply` of 1 000 NetworkPolicies `bench/np-0000`..`np-0999`,
//!   each selecting the server with its own peer and port: 799 select one distinct pod each
//!   (peer pods outside the cluster's nodes, in the snapshot only) on one port, 100 a distinct
//!   pod on a port range (`endPort`), 100 an ipBlock with an except; the client is allowed
//!   only by the last one in policy order, `np-0999`, the worst case for a linear chain.
//!
//! Measurements: (a) new connections per second: client threads in a loop of connect, 64-byte
//! request, 64-byte response, server closes, client closes, for a fixed time; (b) throughput:
//! `iperf3` TCP for a few seconds. Two schedules, both repeated for several rounds, medians
//! reported, ratios computed per round against that round's `none` figure and their median
//! reported: interleaved runs (one variant at a time, the order rotating every round: absolute
//! numbers), and concurrent runs (all variants at once: the machine's other load, whatever it
//! does, hits every variant equally at every instant, and each variant's share of the CPUs
//! buys connections in proportion to 1 / its cost per connection; the robust ratio on a
//! shared machine). It also prints how many rules a new
//! connection walks (from `nft list`) and checks with the rule counters that every connection
//! of a run was allowed by the last policy.
//!
//! Conntrack's TIME_WAIT timeout is lowered to 2 s in the node namespaces (only there): at
//! tens of thousands of connections per run the default 120 s would fill the conntrack table.
//! The client pods' ephemeral port range is widened for the same reason.
//!
//! Run as root: `cargo bench -p nftpol-e2e --bench datapath` (it uses `target/release/nftpol`,
//! else `target/debug/nftpol`, or `NFTPOL_BIN`). Knobs (environment): `DATAPATH_ROUNDS` (9),
//! `DATAPATH_CPS_SECS` (1), `DATAPATH_IPERF_SECS` (2; 0 skips iperf3), `DATAPATH_CLIENTS` (4),
//! `DATAPATH_POLICIES` (1000).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nftpol_e2e::apply::{InputDir, Nftpol, list_table};
use nftpol_e2e::cmd;
use nftpol_e2e::{Cluster, Outcome, Pod, PodSpec, Proto, probe};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

const CPS_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
const MESSAGE: usize = 64;
const CT_ONLY_TABLE: &str = "bench_ct_only";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    None,
    CtOnly,
    One,
    Many,
}

impl Variant {
    fn label(self, policies: usize) -> String {
        match self {
            Variant::None => "none".into(),
            Variant::CtOnly => "ct-only".into(),
            Variant::One => "1 rule".into(),
            Variant::Many => format!("{policies} rules"),
        }
    }
}

const VARIANTS: [Variant; 4] = [Variant::None, Variant::CtOnly, Variant::One, Variant::Many];

/// One variant's node and pods.
struct Lane {
    variant: Variant,
    node: usize,
    client: Pod,
    server: Pod,
    other: Pod,
}

struct Bench {
    cluster: Cluster,
    lanes: Vec<Lane>,
    policies: usize,
}

fn main() {
    if !nftpol_e2e::is_root() {
        eprintln!(
            "\n!!! SKIPPED datapath benchmark: needs root (network namespaces, nftables). !!!\n"
        );
        return;
    }
    if let Err(e) = run() {
        eprintln!("datapath benchmark failed: {e}");
        std::process::exit(1);
    }
}

/// The nftpol binary: `NFTPOL_BIN`, the release build, else the debug build.
fn locate_nftpol() -> Result<Nftpol> {
    if let Ok(n) = Nftpol::locate() {
        return Ok(n);
    }
    let exe = std::env::current_exe()?;
    for profile in ["release", "debug"] {
        if let Some(target) = exe.ancestors().find(|a| a.ends_with("target")) {
            let bin: PathBuf = target.join(profile).join("nftpol");
            if bin.is_file() {
                return Ok(Nftpol { bin });
            }
        }
    }
    Err("nftpol binary not found: `cargo build --release --bin nftpol` or set NFTPOL_BIN".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn run() -> Result<()> {
    nftpol_e2e::init_logging();
    let rounds = env_num("DATAPATH_ROUNDS", 9).max(1) as usize;
    let cps_secs = env_num("DATAPATH_CPS_SECS", 1).max(1);
    let iperf_secs = env_num("DATAPATH_IPERF_SECS", 2);
    let clients = env_num("DATAPATH_CLIENTS", 4).max(1) as usize;
    let policies = env_num("DATAPATH_POLICIES", 1000).max(1) as usize;
    let nftpol = locate_nftpol()?;
    println!(
        "datapath benchmark: {rounds} rounds, {cps_secs} s connection runs with {clients} clients, {iperf_secs} s iperf3 runs, nftpol {}",
        nftpol.bin.display()
    );
    println!(
        "machine: {} cores, load average at start {}",
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg()
    );

    let bench = Bench::new(&nftpol, policies)?;
    bench.check_enforcement()?;
    bench.describe_paths()?;

    // Servers for the whole run: the connection server and iperf3 in every server pod.
    let stop = Arc::new(AtomicBool::new(false));
    let mut server_threads = Vec::new();
    for lane in &bench.lanes {
        server_threads.extend(start_cps_server(&lane.server, clients, stop.clone())?);
        let mut iperf = lane.server.netns.command("iperf3");
        iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
        lane.server.netns.start("iperf3 server", iperf)?;
    }
    thread::sleep(Duration::from_millis(300));

    let mut cps: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut tput: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut errors = vec![0u64; VARIANTS.len()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            let lane = &bench.lanes[v];
            let to = lane.server.ipv4().ok_or("server without IPv4")?;
            let (rate, errs, _) =
                connections_per_second(&lane.client, to, clients, Duration::from_secs(cps_secs))?;
            let gbps = iperf_gbps(&lane.client, to, iperf_secs)?;
            cps[v].push(rate);
            tput[v].push(gbps);
            errors[v] += errs;
            println!(
                "round {}/{rounds} {:>10}: {:>8.0} conn/s ({errs} errors), {:>6.2} Gbit/s  [load {}]",
                round + 1,
                lane.variant.label(policies),
                rate,
                gbps,
                loadavg()
            );
        }
    }
    // Concurrent rounds: all lanes at once, so that whatever else loads the machine hits
    // every variant equally at every instant; each lane's rate is then proportional to 1 /
    // its CPU cost per connection (or per byte).
    let mut ccps: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut ctput: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        let (rates, gbps) = bench.concurrent_round(clients, cps_secs, iperf_secs)?;
        let line: Vec<String> = rates
            .iter()
            .zip(&gbps)
            .zip(&bench.lanes)
            .map(|((r, g), l)| format!("{} {r:.0}/s {g:.2} Gbit/s", l.variant.label(policies)))
            .collect();
        println!(
            "concurrent round {}/{rounds}: {}  [load {}]",
            round + 1,
            line.join(", "),
            loadavg()
        );
        for v in 0..VARIANTS.len() {
            ccps[v].push(rates[v]);
            ctput[v].push(gbps[v]);
        }
    }
    bench.check_counters()?;
    stop.store(true, Ordering::SeqCst);
    for t in server_threads {
        let _ = t.join();
    }

    println!(
        "\nsummary (medians of {rounds} rounds; ratio = median of the per-round ratios to `none`):"
    );
    print_table(
        "interleaved runs, one variant at a time",
        policies,
        &cps,
        &tput,
        Some(&errors),
    );
    print_table(
        "concurrent runs, all variants at once (shares of the same CPUs)",
        policies,
        &ccps,
        &ctput,
        None,
    );
    let many = VARIANTS.len() - 1;
    let verdict = |r: f64, target: f64| {
        if r.is_nan() {
            "skipped"
        } else if r >= target {
            "met"
        } else {
            "NOT met"
        }
    };
    for (what, c, t) in [("interleaved", &cps, &tput), ("concurrent", &ccps, &ctput)] {
        let (cps_ratio, tput_ratio) = (ratio(c, many), ratio(t, many));
        // The same per-round ratio against the conntrack-only table: nftpol's own share.
        let beyond_ct = median(c[many].iter().zip(&c[1]).map(|(a, b)| a / b).collect());
        println!(
            "targets at {policies} rules ({what}): connections/s ratio {cps_ratio:.3} (target >= 0.9: {}), throughput ratio {tput_ratio:.3} (target >= 0.95: {}); connections/s against ct-only {beyond_ct:.3}",
            verdict(cps_ratio, 0.9),
            verdict(tput_ratio, 0.95),
        );
    }
    println!("load average at end {}", loadavg());
    drop(bench);
    Ok(())
}

/// Median of the per-round ratios of variant `v` to variant 0 (`none`).
fn ratio(m: &[Vec<f64>], v: usize) -> f64 {
    median(m[v].iter().zip(&m[0]).map(|(a, b)| a / b).collect())
}

fn print_table(
    title: &str,
    policies: usize,
    cps: &[Vec<f64>],
    tput: &[Vec<f64>],
    errors: Option<&[u64]>,
) {
    println!("{title}:");
    println!(
        "{:>12}  {:>10} {:>7}  {:>10} {:>7}  {:>7}",
        "variant", "conn/s", "ratio", "Gbit/s", "ratio", "errors"
    );
    for (v, variant) in VARIANTS.iter().enumerate() {
        println!(
            "{:>12}  {:>10.0} {:>7.3}  {:>10.2} {:>7.3}  {:>7}",
            variant.label(policies),
            median(cps[v].clone()),
            ratio(cps, v),
            median(tput[v].clone()),
            ratio(tput, v),
            errors
                .map(|e| e[v].to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Bench {
    fn new(nftpol: &Nftpol, policies: usize) -> Result<Bench> {
        let cluster = Cluster::builder("bench-datapath")
            .nodes(VARIANTS.len())
            .build()?;
        let mut specs = Vec::new();
        for i in 0..VARIANTS.len() {
            for role in ["client", "server", "other"] {
                specs.push(
                    PodSpec::new("bench", &format!("{role}-{i}"))
                        .on(i)
                        .label("app", role),
                );
            }
        }
        let mut pods = cluster.add_pods(specs)?.into_iter();
        let mut lanes = Vec::new();
        for (i, variant) in VARIANTS.iter().enumerate() {
            let (Some(client), Some(server), Some(other)) = (pods.next(), pods.next(), pods.next())
            else {
                return Err("missing pods".into());
            };
            // See the module docs: tens of thousands of connections per run.
            cluster
                .node(i)
                .netns
                .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "2")?;
            client
                .netns
                .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            lanes.push(Lane {
                variant: *variant,
                node: i,
                client,
                server,
                other,
            });
        }
        let mut objects = cluster.kube_objects();
        add_peer_objects(&mut objects, policies);
        for lane in &lanes {
            let node = cluster.node(lane.node);
            match lane.variant {
                Variant::None => {}
                Variant::CtOnly => {
                    node.netns.nft_apply(&format!(
                        "table inet {CT_ONLY_TABLE} {{\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept\n\t}}\n}}\n"
                    ))?;
                }
                Variant::One | Variant::Many => {
                    let count = if lane.variant == Variant::One {
                        1
                    } else {
                        policies
                    };
                    let dir = InputDir::new(&cluster, &format!("policies-{count}"))?;
                    dir.write_json("cluster.json", &objects)?;
                    let text: Vec<String> = (policies - count..policies)
                        .map(|i| policy(i, policies))
                        .collect();
                    dir.write("policies.yaml", &text.join("---\n"))?;
                    let start = Instant::now();
                    let s = nftpol.apply(node, dir.path())?;
                    println!(
                        "{}: nftpol apply on {}: {} chains, {} elements, {} rules, {} messages in {:?} (kernel + userspace {:.1} ms)",
                        lane.variant.label(policies),
                        node.name,
                        s.chains_added,
                        s.elements_added,
                        s.rules_added,
                        s.messages,
                        start.elapsed(),
                        s.elapsed_ms
                    );
                }
            }
        }
        Ok(Bench {
            cluster,
            lanes,
            policies,
        })
    }

    fn lane(&self, v: Variant) -> Result<&Lane> {
        self.lanes
            .iter()
            .find(|l| l.variant == v)
            .ok_or_else(|| "no lane".into())
    }

    /// The tables really enforce in both policy variants: the client gets through, `other`
    /// does not. (Nothing listens yet: an allowed client is refused by the server pod itself,
    /// a blocked one times out.)
    fn check_enforcement(&self) -> Result<()> {
        for v in [Variant::None, Variant::One, Variant::Many] {
            let lane = self.lane(v)?;
            let to = lane.server.ipv4().ok_or("server without IPv4")?;
            let ok = probe(
                &lane.client,
                to,
                Proto::Tcp,
                CPS_PORT,
                Duration::from_secs(1),
            );
            let denied = probe(
                &lane.other,
                to,
                Proto::Tcp,
                CPS_PORT,
                Duration::from_secs(1),
            );
            println!(
                "check {}: client -> server:{CPS_PORT} {ok:?}, other -> server:{CPS_PORT} {denied:?}",
                v.label(self.policies)
            );
            let want_denied = if v == Variant::None {
                Outcome::Refused
            } else {
                Outcome::Blocked
            };
            if ok != Outcome::Refused || denied != want_denied {
                return Err(format!(
                    "the {} variant does not enforce as expected",
                    v.label(self.policies)
                )
                .into());
            }
        }
        Ok(())
    }

    /// Prints the rules a new connection from the client walks in the 1000-rule table.
    fn describe_paths(&self) -> Result<()> {
        let lane = self.lane(Variant::Many)?;
        let listing = list_table(self.cluster.node(lane.node))?.ok_or("no table")?;
        let forward = chain_rules(&listing, "forward");
        let pod_chain = format!("ingress_bench_{}", lane.server.name());
        let pod = chain_rules(&listing, &pod_chain);
        let upto = |rules: &[String], needle: &str| {
            rules
                .iter()
                .position(|r| r.contains(needle))
                .map(|i| i + 1)
                .unwrap_or(rules.len())
        };
        let f = upto(&forward, "ip daddr vmap @ingress_pods_v4");
        let p = upto(&pod, "@ingress_peer_port_v4");
        println!(
            "{} rules: forward chain {} rules, {pod_chain} {} rules, {} chains in the table",
            self.policies,
            forward.len(),
            pod.len(),
            listing.matches("\n\tchain ").count()
        );
        println!(
            "a new client -> server connection walks {} rules: forward rules 1-{f}, {pod_chain} rules 1-{p}, 1 rule in np_bench_np-{:04}_ingress_0",
            f + p + 1,
            self.policies - 1
        );
        for (i, r) in pod.iter().enumerate() {
            let short: String = r.chars().take(150).collect();
            println!("  {pod_chain}[{}]: {short}", i + 1);
        }
        Ok(())
    }

    /// Connections per second, then iperf3 throughput, of every lane at the same time.
    fn concurrent_round(
        &self,
        clients: usize,
        cps_secs: u64,
        iperf_secs: u64,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let targets: Vec<(&Pod, IpAddr)> = self
            .lanes
            .iter()
            .map(|l| Ok((&l.client, l.server.ipv4().ok_or("server without IPv4")?)))
            .collect::<Result<_>>()?;
        let rates = thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|(client, to)| {
                    s.spawn(move || {
                        connections_per_second(client, *to, clients, Duration::from_secs(cps_secs))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r.map(|(rate, _, _)| rate),
                    Err(_) => Err("lane thread panicked".into()),
                })
                .collect::<Result<Vec<f64>>>()
        })?;
        let gbps = thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|(client, to)| s.spawn(move || iperf_gbps(client, *to, iperf_secs)))
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(_) => Err("lane thread panicked".into()),
                })
                .collect::<Result<Vec<f64>>>()
        })?;
        Ok((rates, gbps))
    }

    /// One more 1 s run in the 1000-rule lane: the last policy's rule counted every
    /// connection of it.
    fn check_counters(&self) -> Result<()> {
        let lane = self.lane(Variant::Many)?;
        let node = self.cluster.node(lane.node);
        let comment = format!("bench/np-{:04} ingress rule 0", self.policies - 1);
        let count = || -> Result<u64> {
            let listing = list_table(node)?.ok_or("no table")?;
            let line = listing
                .lines()
                .find(|l| l.contains(&comment))
                .ok_or("no rule chain of the last policy")?;
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words
                .iter()
                .position(|w| *w == "packets")
                .ok_or("no counter")?;
            Ok(words.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(0))
        };
        let before = count()?;
        let to = lane.server.ipv4().ok_or("server without IPv4")?;
        let (_, errs, connections) =
            connections_per_second(&lane.client, to, 1, Duration::from_secs(1))?;
        let counted = count()? - before;
        println!(
            "\ncounter check: one 1 s run made {connections} connections ({errs} errors); \"{comment}\" counted {counted} packets (one per new connection)"
        );
        Ok(())
    }
}

/// The rules of a chain in an `nft list` output.
fn chain_rules(listing: &str, chain: &str) -> Vec<String> {
    let Some(start) = listing.find(&format!("chain {chain} {{")) else {
        return Vec::new();
    };
    let body = &listing[start..];
    let end = body.find("\n\t}").unwrap_or(body.len());
    body[..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("type "))
        .map(str::to_string)
        .collect()
}

/// Peer pods (only in the snapshot, on a node that does not exist here) and their namespace.
fn add_peer_objects(list: &mut Value, policies: usize) {
    let Some(items) = list["items"].as_array_mut() else {
        return;
    };
    items.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "peers", "labels": {"kubernetes.io/metadata.name": "peers"}},
    }));
    for i in 0..policies {
        let ip = format!("10.250.{}.{}", i / 250, i % 250 + 1);
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": "peers",
                "name": format!("peer-{i:04}"),
                "uid": format!("00000000-0000-4000-9000-{i:012}"),
                "labels": {"peer": format!("p{i}")},
            },
            "spec": {"nodeName": "elsewhere", "containers": [{"name": "main", "image": "none"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }));
    }
}

/// NetworkPolicy `bench/np-<i>`: selects the server; the last one allows the client on the
/// benchmark ports, the others a distinct peer pod / port, port range or ipBlock.
fn policy(i: usize, policies: usize) -> String {
    let head = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np-{i:04}, namespace: bench}}\nspec:\n  podSelector:\n    matchLabels: {{app: server}}\n  ingress:\n"
    );
    let peer = format!(
        "  - from:\n    - namespaceSelector:\n        matchLabels: {{kubernetes.io/metadata.name: peers}}\n      podSelector:\n        matchLabels: {{peer: p{i}}}\n"
    );
    let rule = if i + 1 == policies {
        format!(
            "  - from:\n    - podSelector:\n        matchLabels: {{app: client}}\n    ports:\n    - {{protocol: TCP, port: {CPS_PORT}}}\n    - {{protocol: TCP, port: {IPERF_PORT}}}\n"
        )
    } else if i.is_multiple_of(10) {
        format!(
            "  - from:\n    - ipBlock:\n        cidr: 172.16.{}.0/24\n        except: [172.16.{}.128/25]\n    ports:\n    - {{protocol: TCP, port: {}}}\n",
            i / 10,
            i / 10,
            10000 + i
        )
    } else if i % 10 == 5 {
        format!(
            "{peer}    ports:\n    - {{protocol: TCP, port: 20000, endPort: {}}}\n",
            20000 + i
        )
    } else {
        format!(
            "{peer}    ports:\n    - {{protocol: TCP, port: {}}}\n",
            10000 + i
        )
    };
    head + &rule
}

/// The connection server: `threads` threads accepting on one listener; each connection reads
/// a request, writes a response and closes.
fn start_cps_server(
    server: &Pod,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<thread::JoinHandle<()>>> {
    let listener = server.netns.run(|| -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], CPS_PORT)).into())?;
        socket.listen(4096)?;
        // accept() honours SO_RCVTIMEO: that is how the threads notice `stop`.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(socket.into())
    })??;
    let mut handles = Vec::new();
    for i in 0..threads.max(2) {
        let listener = listener.try_clone()?;
        let stop = stop.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("cps server {i}"))
                .spawn(move || {
                    let mut buf = [0u8; MESSAGE];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((mut conn, _)) = listener.accept() else {
                            continue;
                        };
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                        if conn.read_exact(&mut buf).is_ok() {
                            // The client counts what completed; a failed write is its failure.
                            let _ = conn.write_all(&buf);
                        }
                    }
                })?,
        );
    }
    Ok(handles)
}

/// Connections per second from `client` to `server:CPS_PORT` over `duration`, with `threads`
/// concurrent clients; the number of failed attempts; the number of connections.
fn connections_per_second(
    client: &Pod,
    server: IpAddr,
    threads: usize,
    duration: Duration,
) -> Result<(f64, u64, u64)> {
    let to = SocketAddr::new(server, CPS_PORT);
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for i in 0..threads {
        handles.push(client.netns.spawn(&format!("cps client {i}"), move || {
            let request = [b'x'; MESSAGE];
            let mut response = [0u8; MESSAGE];
            let (mut ok, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let done =
                    TcpStream::connect_timeout(&to, Duration::from_secs(1)).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(&request)?;
                        s.read_exact(&mut response)?;
                        // Wait for the server's close (it closes first).
                        let mut rest = [0u8; 1];
                        let _ = s.read(&mut rest)?;
                        Ok(())
                    });
                match done {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })?);
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for h in handles {
        let (o, f) = h.join().map_err(|_| "client thread panicked")?;
        ok += o;
        failed += f;
    }
    Ok((ok as f64 / start.elapsed().as_secs_f64(), failed, ok))
}

/// `iperf3` TCP throughput from `client` to `server` in Gbit/s (receiver side); NaN when
/// `secs` is 0 (skipped).
fn iperf_gbps(client: &Pod, server: IpAddr, secs: u64) -> Result<f64> {
    if secs == 0 {
        return Ok(f64::NAN);
    }
    let mut c = client.netns.command("iperf3");
    c.args([
        "-c",
        &server.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    let out = cmd::run_checked(&mut c, None, Duration::from_secs(secs + 30))?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| format!("no throughput in iperf3 output: {}", out.stdout).into())
}
