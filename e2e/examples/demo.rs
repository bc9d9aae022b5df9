//! The local demo: `sudo e2e/demo.sh [--keep]` builds the binaries and runs this.
//!
//! A two-node cluster out of network namespaces (the harness of this crate: the real `bridge`
//! and `host-local` CNI plugins, the nftpol plugin chained after `bridge`), a test API server
//! and an unchanged `nftpol agent` per node. It applies the namespaces and demo workloads of
//! both `examples/` (Deployments become pods, Services go to the kube-proxy stand-in, plus
//! the managed database, the cluster DNS and an "internet" server the examples talk about),
//! prints who can connect to whom, applies the examples' policies through the API server,
//! waits until the agents enforce them, prints the matrices again (changed cells marked,
//! checked against the examples' READMEs) and node-0's table.
//!
//! Everything it created is removed at the end, also on Ctrl-C, SIGTERM or SIGHUP: a signal
//! only raises a flag, which the demo checks between steps (each step lasts a few seconds at
//! most), then it tears down as it does normally. A third signal exits at once; leftovers of
//! a run that could not clean up (e.g. after `kill -9`) are removed by the next run. With
//! `--keep` the cluster stays up until Enter (or a signal).
//!
//! The binaries are found as the tests find them (`NFTPOL_BIN`, `NFTPOL_CNI_BIN`, else next
//! to this executable's profile directory); `examples/` as the tests find it
//! (`NFTPOL_EXAMPLES_DIR`, else the workspace's).

use std::error::Error;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nftpol_e2e::examples::{
    DATABASE_IP, DATABASE_PORT, add_database, apply_kind, deployment_pods, kube_dns_ip,
    kube_dns_pods, kube_dns_services, manifests, serve_declared_ports, services,
};
use nftpol_e2e::kube_cluster::{KubeCluster, TABLE, probe_until};
use nftpol_e2e::netns::NETNS_DIR;
use nftpol_e2e::{Host, Outcome, Pod, Proto, Service, TargetMatrix, TargetMatrixResult};
use serde_json::Value;

const USAGE: &str = "usage: demo [--keep]   (run as root; `e2e/demo.sh` builds and runs it)
  --keep   leave the cluster up after the demo until Enter is pressed (or Ctrl-C)";

/// Prefix of every namespace and state directory of the demo (`demo-<pid>-<seq>-...`).
const PREFIX: &str = "demo";
/// Timeout of the matrix probes: a blocked cell costs this much (all cells run at once).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on the wait for the agents to enforce the policies (they take milliseconds).
const ENFORCE_WAIT: Duration = Duration::from_secs(20);
/// The "internet": a web server outside the cluster (a documentation address).
const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const INTERNET_PORT: u16 = 443;
/// ClusterIP of Service tenant-a/web: 10.96.0.100.
const WEB_SERVICE_N: u16 = 100;
/// What every tenant pod serves: the web pods' `http` port and "another port".
const TENANT_PORTS: [(Proto, u16); 2] = [(Proto::Tcp, 8080), (Proto::Tcp, 9999)];

/// Raised by the signal thread; checked between steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl Error for Interrupted {}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Box::new(Interrupted));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut keep = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("demo: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !nftpol_e2e::is_root() {
        eprintln!(
            "demo: needs root (it creates network namespaces and nftables tables): sudo e2e/demo.sh"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = catch_signals() {
        eprintln!("demo: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    nftpol_e2e::init_logging();

    let start = Instant::now();
    let (result, removed) = run(keep);
    let elapsed = start.elapsed().as_secs_f64();
    let gone = if removed {
        "everything the demo created is gone"
    } else {
        "some namespaces are left (see above; the next run removes them)"
    };
    match result {
        Ok(true) if removed => {
            println!("\nDone in {elapsed:.1} s.");
            ExitCode::SUCCESS
        }
        Ok(as_documented) => {
            let cells = if as_documented {
                ""
            } else {
                "some cells differ from the examples' READMEs (see above); "
            };
            println!("\nDone in {elapsed:.1} s, but {cells}{gone}.");
            ExitCode::FAILURE
        }
        Err(e) if e.is::<Interrupted>() || INTERRUPTED.load(Ordering::SeqCst) => {
            println!("\nInterrupted after {elapsed:.1} s; {gone}.");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\ndemo failed after {elapsed:.1} s: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP (before anything is created, so none is
/// missed) and a thread that takes them: the first asks the demo to stop after the current
/// step and clean up, the third exits at once. Handlers, not a blocked signal mask: programs
/// the demo starts (the agents, `ip`, `nft`, the plugins) must keep the default dispositions,
/// which exec restores for handled signals but not for blocked ones.
fn catch_signals() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut int, mut term, mut hup) = rt.block_on(async {
        io::Result::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut count = 0;
                loop {
                    let name = tokio::select! {
                        Some(()) = int.recv() => "SIGINT",
                        Some(()) = term.recv() => "SIGTERM",
                        Some(()) = hup.recv() => "SIGHUP",
                        else => return,
                    };
                    count += 1;
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    match count {
                        1 => eprintln!(
                            "\n{name}: stopping after the current step and removing everything the demo created..."
                        ),
                        2 => eprintln!(
                            "\n{name}: still cleaning up; once more quits at once (the next run removes what is left)"
                        ),
                        _ => std::process::exit(130),
                    }
                }
            })
        })?;
    Ok(())
}

/// Prints a step header.
fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
    let _ = io::stdout().flush();
}

fn took(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// The whole demo, and whether every namespace it created is gone afterwards. Ok(false) when
/// a matrix differs from what the examples' READMEs say.
fn run(keep: bool) -> (Result<bool>, bool) {
    println!(
        "nftpol demo: Kubernetes NetworkPolicies enforced by nftables, on a two-node cluster made of network namespaces."
    );
    step(
        1,
        "Cluster: 2 nodes (network namespaces), the bridge CNI plugin with nftpol chained after it, a test API server, an nftpol agent per node",
    );
    let t = Instant::now();
    // A failed build removes what it had created.
    let kc = match KubeCluster::builder(PREFIX).nodes(2).build() {
        Ok(kc) => kc,
        Err(e) => return (Err(e.into()), true),
    };
    println!("      up, agents ready ({})", took(t));
    let names = kc.netns_names();
    let outcome = demo(&kc, keep);

    println!("\nRemoving everything: agents, API server, pods (CNI DEL), namespaces...");
    let t = Instant::now();
    let mut names_now = kc.netns_names();
    names_now.extend(names);
    drop(kc);
    names_now.sort();
    names_now.dedup();
    let left: Vec<&String> = names_now
        .iter()
        .filter(|n| Path::new(NETNS_DIR).join(n).exists())
        .collect();
    if left.is_empty() {
        println!(
            "      removed {} network namespaces ({})",
            names_now.len(),
            took(t)
        );
    } else {
        println!("      could not remove: {left:?} (the next run removes them)");
    }
    (outcome, left.is_empty())
}

/// The pods, hosts and Services of the demo.
struct Setup {
    pods: Vec<Pod>,
    db: Host,
    internet: Host,
    services: Vec<Service>,
}

impl Setup {
    fn pod(&self, key: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .ok_or_else(|| format!("no pod {key}").into())
    }
}

fn demo(kc: &KubeCluster, keep: bool) -> Result<bool> {
    check_interrupt()?;
    step(
        2,
        "Workloads: the examples' namespaces and demo workloads (examples/*/00-*.yaml, examples/*/20-demo-workloads.yaml)",
    );
    let t = Instant::now();
    let setup = workloads(kc)?;
    println!("      {} pods running ({})\n", setup.pods.len(), took(t));
    print!("{}", describe(kc, &setup));
    check_interrupt()?;

    step(3, "Connectivity before any policy: everything is open");
    let before = matrices(&setup)?;
    let mut as_documented = print_matrices(&before, None);
    check_interrupt()?;

    step(
        4,
        "Policies: kubectl apply -f examples/tenant-ingress/10-policies.yaml -f examples/egress-db-dns/10-policy.yaml",
    );
    enforce(kc, &setup)?;
    check_interrupt()?;

    step(
        5,
        "Connectivity with the policies (cells that changed are listed)",
    );
    let after = matrices(&setup)?;
    as_documented &= print_matrices(&after, Some(&before));
    check_interrupt()?;

    let node = kc.node(0);
    step(
        6,
        &format!(
            "node-0's table: ip netns exec {} nft list table inet {TABLE}",
            node.netns.name()
        ),
    );
    match kc.table(0)? {
        Some(table) => print_table(&table),
        None => println!("      (no table inet {TABLE} on node-0)"),
    }
    check_interrupt()?;

    hints(kc, &setup, keep);
    if keep {
        wait_for_enter();
        check_interrupt()?;
    }
    Ok(as_documented)
}

/// Namespaces, pods, servers, hosts and Services of both examples.
fn workloads(kc: &KubeCluster) -> Result<Setup> {
    for file in [
        "tenant-ingress/00-namespaces.yaml",
        "egress-db-dns/00-namespace.yaml",
    ] {
        apply_kind(kc, &manifests(file)?, "Namespace")?;
    }
    let tenant = manifests("tenant-ingress/20-demo-workloads.yaml")?;
    let shop = manifests("egress-db-dns/20-demo-workloads.yaml")?;
    // web-0 and neighbour on node-0, web-1 and the other tenants' clients on node-1 (so the
    // web pods are reached on the same node and across nodes); api and batch on node-0 with
    // one of the DNS pods (coredns-<i> on node-i).
    let mut specs = deployment_pods(&tenant, |deployment, replica| match deployment {
        "web" => replica % 2,
        "neighbour" => 0,
        _ => 1,
    })?;
    specs.extend(deployment_pods(&shop, |_, _| 0)?);
    specs.extend(kube_dns_pods(kc.nodes().len()));
    let pods = kc.add_pods(specs)?;
    for pod in &pods {
        if pod.namespace() == "kube-system" {
            serve_declared_ports(pod)?;
        } else {
            pod.serve_all(&TENANT_PORTS)?;
        }
    }
    let mut svcs = services(&tenant, &pods, WEB_SERVICE_N)?;
    svcs.extend(kube_dns_services(&pods));
    for svc in &svcs {
        kc.add_service(svc.clone())?;
    }
    let db = add_database(kc)?;
    let internet = kc.add_host("internet")?;
    internet
        .netns
        .ip(&["addr", "add", &format!("{INTERNET_IP}/24"), "dev", "eth0"])?;
    for node in kc.nodes() {
        let via = internet.ipv4.to_string();
        node.netns
            .ip(&["route", "add", &format!("{INTERNET_IP}/32"), "via", &via])?;
    }
    internet.netns.serve(Proto::Tcp, INTERNET_PORT)?;
    Ok(Setup {
        pods,
        db,
        internet,
        services: svcs,
    })
}

/// Nodes with their pods, the hosts outside the cluster, the Services.
fn describe(kc: &KubeCluster, setup: &Setup) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "      API server {} (in the underlay namespace {}, which links the nodes)",
        kc.api().url(),
        kc.underlay().name()
    );
    let width = setup.pods.iter().map(|p| p.key().len()).max().unwrap_or(0);
    for (i, node) in kc.nodes().iter().enumerate() {
        let agent = kc
            .agent(i)
            .map(|p| format!("agent pid {}", p.pid()))
            .unwrap_or_else(|| "no agent".into());
        let _ = writeln!(
            s,
            "      {}  {}  pods {}  netns {}  {agent}",
            node.name,
            node.ipv4,
            node.pod_cidr_v4,
            node.netns.name()
        );
        for pod in setup.pods.iter().filter(|p| p.node() == i) {
            let ip = pod.ipv4().map(|ip| ip.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "        {:<width$}  {ip:<12}  netns {}",
                pod.key(),
                pod.netns.name()
            );
        }
    }
    let _ = writeln!(s, "      outside the cluster:");
    for (host, ip, what) in [
        (
            &setup.db,
            DATABASE_IP,
            format!("the managed database, TCP {DATABASE_PORT}"),
        ),
        (
            &setup.internet,
            INTERNET_IP,
            format!("a server on the internet, TCP {INTERNET_PORT}"),
        ),
    ] {
        let _ = writeln!(
            s,
            "        {:<8}  {ip:<13}  {what}  netns {}",
            host.name,
            host.netns.name()
        );
    }
    let _ = writeln!(s, "      Services (DNAT in each node, like kube-proxy):");
    for svc in &setup.services {
        let backends: Vec<String> = svc.backends.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "        {:<22}  {}:{}/{} -> {}",
            svc.name,
            svc.cluster_ip,
            svc.port,
            svc.proto,
            backends.join(", ")
        );
    }
    s
}

/// A matrix of the demo: its title, the examples' README in one line, the expected grid
/// after the policies (a string of outcome symbols per row).
struct View {
    title: &'static str,
    policy: &'static str,
    expected_after: Vec<&'static str>,
    matrix: TargetMatrix,
}

fn views(setup: &Setup) -> Result<Vec<View>> {
    let at = |pod: &Pod, port: u16| -> Result<SocketAddr> {
        let ip = pod
            .ipv4()
            .ok_or_else(|| format!("pod {} has no IPv4 address", pod.key()))?;
        Ok(SocketAddr::new(ip, port))
    };
    let web0 = setup.pod("tenant-a/web-0")?;
    let web1 = setup.pod("tenant-a/web-1")?;
    let web_svc = setup
        .services
        .iter()
        .find(|s| s.name == "tenant-a/web")
        .ok_or("no Service tenant-a/web")?;
    let tenant = TargetMatrix::new(PROBE_TIMEOUT)
        .row(setup.pod("ingress-nginx/ingress-client-0")?)
        .row(setup.pod("tenant-b/outsider-0")?)
        .row(setup.pod("tenant-a/neighbour-0")?)
        .target("tenant-a/web-0 (node-0) http", Proto::Tcp, at(web0, 8080)?)
        .target("tenant-a/web-1 (node-1) http", Proto::Tcp, at(web1, 8080)?)
        .target(
            "Service tenant-a/web",
            Proto::Tcp,
            SocketAddr::new(web_svc.cluster_ip, web_svc.port),
        )
        .target("tenant-a/web-0, another port", Proto::Tcp, at(web0, 9999)?);
    let dns = kube_dns_ip();
    let shop = TargetMatrix::new(PROBE_TIMEOUT)
        .row(setup.pod("shop/api-0")?)
        .row(setup.pod("shop/batch-0")?)
        .target(
            "database",
            Proto::Tcp,
            SocketAddr::new(IpAddr::V4(DATABASE_IP), DATABASE_PORT),
        )
        .target("Service kube-dns", Proto::Udp, SocketAddr::new(dns, 53))
        .target("Service kube-dns", Proto::Tcp, SocketAddr::new(dns, 53))
        .target(
            "kube-system/coredns-1 (node-1)",
            Proto::Udp,
            at(setup.pod("kube-system/coredns-1")?, 53)?,
        )
        .target(
            "kube-system/coredns-0 metrics",
            Proto::Tcp,
            at(setup.pod("kube-system/coredns-0")?, 9153)?,
        )
        .target(
            "internet",
            Proto::Tcp,
            SocketAddr::new(IpAddr::V4(INTERNET_IP), INTERNET_PORT),
        )
        .target(
            "tenant-b/outsider-0 (another pod)",
            Proto::Tcp,
            at(setup.pod("tenant-b/outsider-0")?, 8080)?,
        );
    Ok(vec![
        View {
            title: "examples/tenant-ingress: who can connect to tenant-a's web pods?",
            policy: "policy: nothing may connect to tenant-a, except the ingress-nginx namespace to the web pods' port \"http\"",
            expected_after: vec!["+++-", "----", "----"],
            matrix: tenant,
        },
        View {
            title: "examples/egress-db-dns: where can shop's pods connect to?",
            policy: "policy: the api pods may connect only to the database (10.200.0.0/24, TCP 5432) and the cluster DNS (UDP/TCP 53)",
            expected_after: vec!["++++---", "+++++++"],
            matrix: shop,
        },
    ])
}

/// Every view's matrix, all run at once (a blocked cell costs one probe timeout).
fn matrices(setup: &Setup) -> Result<Vec<(View, TargetMatrixResult)>> {
    let views = views(setup)?;
    let results: Vec<TargetMatrixResult> = thread::scope(|s| {
        let running: Vec<_> = views.iter().map(|v| s.spawn(|| v.matrix.run())).collect();
        running
            .into_iter()
            .map(|h| h.join().map_err(|_| "a matrix thread panicked"))
            .collect::<Result<_, _>>()
    })?;
    Ok(views.into_iter().zip(results).collect())
}

/// Prints the matrices; with `before` (the matrices without policies) the changed cells are
/// listed and every grid is checked against its README. Returns whether every grid is what
/// the examples' READMEs say.
fn print_matrices(
    results: &[(View, TargetMatrixResult)],
    before: Option<&[(View, TargetMatrixResult)]>,
) -> bool {
    let mut ok = true;
    for (i, (view, result)) in results.iter().enumerate() {
        println!("\n    {}", view.title);
        let expected: Vec<String> = match before {
            None => {
                print!("{}", indent(&result.grid()));
                view.expected_after
                    .iter()
                    .map(|r| "+".repeat(r.len()))
                    .collect()
            }
            Some(before) => {
                println!("    {}", view.policy);
                match before.get(i) {
                    Some((_, b)) => print!("{}", indent(&result.grid_since(b))),
                    None => print!("{}", indent(&result.grid())),
                }
                view.expected_after.iter().map(|r| r.to_string()).collect()
            }
        };
        let actual: Vec<String> = (0..result.rows().len())
            .map(|r| {
                (0..result.cols().len())
                    .map(|k| result.get(r, k).map_or('?', |p| p.outcome.symbol()))
                    .collect()
            })
            .collect();
        if actual == expected {
            println!(
                "      as the example's README says ({} probes in {:.1} s)",
                result.rows().len() * result.cols().len(),
                result.elapsed.as_secs_f64()
            );
        } else {
            ok = false;
            println!("      !!! differs from the example's README: expected rows {expected:?}");
            for (r, row) in result.rows().iter().enumerate() {
                for (k, target) in result.cols().iter().enumerate() {
                    if let Some(p) = result.get(r, k)
                        && p.outcome != Outcome::Connected
                    {
                        println!(
                            "      {row} -> {} {} {}: {:?} {}",
                            target.label,
                            target.proto,
                            target.to,
                            p.outcome,
                            p.detail.clone().unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    ok
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Applies the policies and waits until both nodes' agents have them and a flow of each
/// example is blocked.
fn enforce(kc: &KubeCluster, setup: &Setup) -> Result<()> {
    let mut count = 0;
    let applied = Instant::now();
    for file in [
        "tenant-ingress/10-policies.yaml",
        "egress-db-dns/10-policy.yaml",
    ] {
        let docs: Vec<Value> = manifests(file)?;
        for doc in docs.iter().filter(|d| d["kind"] == "NetworkPolicy") {
            println!(
                "      networkpolicy {}/{} created",
                doc["metadata"]["namespace"].as_str().unwrap_or("?"),
                doc["metadata"]["name"].as_str().unwrap_or("?")
            );
        }
        count += apply_kind(kc, &docs, "NetworkPolicy")?;
    }
    interruptible(|slice| kc.wait_watched("networkpolicy", count, slice))?;
    let seen = applied.elapsed();
    let web0 = setup.pod("tenant-a/web-0")?;
    let outsider = setup.pod("tenant-b/outsider-0")?;
    let api = setup.pod("shop/api-0")?;
    let fast = Duration::from_millis(200);
    let first_blocked = |from: &Pod, to: SocketAddr| -> Result<f64, String> {
        let t =
            interruptible(|slice| probe_until(from, Proto::Tcp, to, Outcome::Blocked, fast, slice))
                .map_err(|e| e.to_string())?;
        Ok(t.since(applied).0)
    };
    let web_ip = web0.ipv4().ok_or("web-0 has no IPv4 address")?;
    let internet = SocketAddr::new(IpAddr::V4(INTERNET_IP), INTERNET_PORT);
    // Both at once: each probes back to back until its flow is dropped.
    let (ingress, egress) = thread::scope(|s| {
        let ingress = s.spawn(|| first_blocked(outsider, SocketAddr::new(web_ip, 8080)));
        let egress = first_blocked(api, internet);
        (ingress.join(), egress)
    });
    let ingress = ingress.map_err(|_| "probe thread panicked")??;
    let egress = egress?;
    println!(
        "      both agents had the {count} policies {:.0} ms after the apply; first probes blocked at {ingress:.0} ms (outsider -> web-0) and {egress:.0} ms (api -> internet)",
        seen.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Runs `wait` (a wait with a timeout) in slices of 250 ms until it succeeds, for at most
/// [`ENFORCE_WAIT`], so that a signal is noticed in time (on Ctrl-C from a terminal the
/// agents stop too, and what the demo waits for never comes). Returns the last error.
fn interruptible<T, E: Into<Box<dyn Error>>>(
    mut wait: impl FnMut(Duration) -> Result<T, E>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        check_interrupt()?;
        match wait(Duration::from_millis(250)) {
            Ok(t) => return Ok(t),
            Err(e) if start.elapsed() >= ENFORCE_WAIT => return Err(e.into()),
            Err(_) => {}
        }
    }
}

/// Prints the table without its empty sets and maps (`set x { type ...; }` with no
/// elements), saying how many it left out.
fn print_table(table: &str) {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut omitted = Vec::new();
    for line in table.lines() {
        let t = line.trim();
        if block.is_empty() && (t.starts_with("set ") || t.starts_with("map ")) {
            block.push(line);
            continue;
        }
        if !block.is_empty() {
            block.push(line);
            if t == "}" {
                if block.iter().any(|l| l.trim_start().starts_with("elements")) {
                    out.append(&mut block);
                } else {
                    let name = block[0].split_whitespace().nth(1).unwrap_or("?");
                    omitted.push(name.to_string());
                    block.clear();
                }
                // An empty set leaves the blank line after it behind.
            }
            continue;
        }
        if t.is_empty() && out.last().is_some_and(|l: &&str| l.trim().is_empty()) {
            continue;
        }
        out.push(line);
    }
    out.append(&mut block);
    for line in out {
        println!("    {line}");
    }
    if !omitted.is_empty() {
        println!(
            "    ({} empty sets and maps left out: {})",
            omitted.len(),
            omitted.join(", ")
        );
    }
}

/// Commands to explore the cluster (it stays up with `--keep`).
fn hints(kc: &KubeCluster, setup: &Setup, keep: bool) {
    let node = kc.node(0).netns.name();
    let mut lines = vec![
        (
            "the namespaces: nodes -n<i>, pods -p<k>, hosts -h<k>, the underlay -ul".to_string(),
            format!("ip netns list | grep {}", kc.base_name()),
        ),
        (
            "node-0's ruleset: nftpol's table and the Services' (table inet e2e_svc)".into(),
            format!("ip netns exec {node} nft list ruleset"),
        ),
        (
            "watch node-0's table change as pods and policies come and go".into(),
            format!("ip netns exec {node} nft monitor"),
        ),
    ];
    if let (Ok(outsider), Ok(web0)) = (
        setup.pod("tenant-b/outsider-0"),
        setup.pod("tenant-a/web-0"),
    ) {
        let ip = web0.ipv4().map(|ip| ip.to_string()).unwrap_or_default();
        lines.push((
            "connect from tenant-b/outsider-0 to tenant-a/web-0".into(),
            format!(
                "ip netns exec {} timeout 2 bash -c '</dev/tcp/{ip}/8080' && echo connected || echo blocked",
                outsider.netns.name()
            ),
        ));
    }
    if let Some(agent) = kc.agent(0) {
        lines.push((
            "node-0's agent log (JSON lines)".into(),
            format!("tail -f {}", agent.output_paths().1.display()),
        ));
    }
    if let Some(addr) = kc.metrics_addr(0) {
        lines.push((
            "node-0's agent metrics".into(),
            format!("ip netns exec {node} curl -s http://{addr}/metrics"),
        ));
    }
    if keep {
        println!("\nThe cluster stays up. To look around, in another terminal, as root:");
    } else {
        println!("\nWith `sudo e2e/demo.sh --keep` the cluster stays up to look around, e.g.:");
    }
    for (what, command) in lines {
        println!("    # {what}\n    {command}");
    }
}

/// Waits for Enter, or for a signal; if stdin is closed, for a signal only.
fn wait_for_enter() {
    println!("\nPress Enter to remove everything (or Ctrl-C).");
    let (tx, rx) = mpsc::channel();
    // Left blocked on stdin if a signal comes first: the process exits soon after anyway.
    let reader = thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut line = String::new();
        let _ = tx.send(io::stdin().read_line(&mut line));
    });
    if let Err(e) = reader {
        println!("(cannot read stdin: {e}; waiting for Ctrl-C or SIGTERM)");
    }
    let mut stdin_open = true;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        if !stdin_open {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(n)) if n > 0 => return,
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                println!("(stdin is closed: waiting for Ctrl-C or SIGTERM instead)");
                stdin_open = false;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}
