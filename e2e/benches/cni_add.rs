//! The latency nftpol adds to a pod's start: CNI ADD of the whole chain (`bridge` +
//! `host-local`, then `nftpol`, which returns only once the node agent committed the pod's
//! isolation to the kernel) against the same chain without `nftpol`.
//!
//! One node of [`KubeCluster`] with its agent; the namespace has a default-deny policy, so
//! every pod gets its own chain and map elements (the realistic transaction). Pods are added
//! in pairs, one with each conflist, alternating which goes first, so that drift (the node
//! filling up, other load on the machine) hits both alike. Like the kubelet, the Pod object
//! exists (Pending) before the ADD and gets its addresses after it; only the runtime's ADD is
//! timed. All pods stay until the end (the table grows to N isolated pods), then get DEL.
//!
//! A third chain has a do-nothing plugin in nftpol's place (Debian's `portmap` without port
//! mappings returns `prevResult` at once): the cost of any chained plugin in this harness,
//! where every plugin runs through `ip netns exec <node>` (a real runtime runs plugins in the
//! host namespace directly, without that exec), so that nftpol's own share can be told apart.
//!
//! A fourth pod gets `bridge` through the harness and then the `nftpol` step alone, executed
//! directly from the bench's (host) namespace with `bridge`'s result as `prevResult`, exactly
//! as containerd or CRI-O run a chained plugin: that time is what nftpol adds to a pod's
//! start on a real node.
//!
//! Prints p50/p90/p99/max of the chains, of the per-round differences and of the direct
//! nftpol step. The target of the issue is < 10 ms at p99 for what nftpol adds.
//!
//! ```sh
//! cargo build --release --bin nftpol -p nftpol && cargo build --release -p nftpol-cni
//! cargo bench -p nftpol-e2e --bench cni_add            # CNI_ADD_PODS=60 rounds by default
//! ```
//!
//! The bench itself only times subprocesses, so a debug build of it measures the same thing
//! (and skips compiling the dev-dependencies in release): `cargo build -p nftpol-e2e
//! --benches`, then run `target/debug/deps/cni_add-*` with `NFTPOL_BIN` and `NFTPOL_CNI_BIN`
//! pointing at the release binaries. `CNI_ADD_PLUGIN=main` installs the main binary as the
//! plugin instead of the static one.
//!
//! `CNI_ADD_POLICY=same-namespace` adds a policy letting the namespace's pods reach each other
//! (the ingress allow map then holds a pair per two pods).
//!
//! Needs root (network namespaces); prints a loud message and exits 0 otherwise.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nftpol_e2e::apiserver::Kind;
use nftpol_e2e::cni::{Attachment, ConfList};
use nftpol_e2e::kube_cluster::{KubeCluster, PluginBinary};
use nftpol_e2e::{Netns, netns};
use serde_json::json;

const PREFIX: &str = "bench-cni-add";

fn main() {
    if !nftpol_e2e::is_root() {
        eprintln!("\n!!! SKIPPED cni_add bench: needs root (network namespaces, nftables). !!!\n");
        return;
    }
    nftpol_e2e::init_logging();
    let pods: usize = std::env::var("CNI_ADD_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
        .clamp(1, 60);
    let plugin = match std::env::var("CNI_ADD_PLUGIN").as_deref() {
        Ok("main") => PluginBinary::Main,
        _ => PluginBinary::Static,
    };
    if let Err(e) = run(pods, plugin) {
        eprintln!("cni_add bench failed: {e}");
        std::process::exit(1);
    }
}

struct Sandbox {
    netns: Netns,
    att: Attachment,
    conf: ConfList,
    result: serde_json::Value,
}

fn run(pods: usize, plugin: PluginBinary) -> Result<(), Box<dyn std::error::Error>> {
    let kc = KubeCluster::builder(PREFIX)
        .nodes(1)
        .plugin(plugin)
        .build()?;
    kc.create_namespace("bench", [])?;
    kc.apply(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "namespace": "bench", "name": "default-deny" },
        "spec": { "podSelector": {}, "policyTypes": ["Ingress", "Egress"] },
    }))?;
    // CNI_ADD_POLICY=same-namespace: the pods also admit each other (every pod is a peer of
    // every other: the allow maps grow with the square of the pods).
    let same_namespace = std::env::var("CNI_ADD_POLICY").as_deref() == Ok("same-namespace");
    if same_namespace {
        kc.apply(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "namespace": "bench", "name": "allow-same-namespace" },
            "spec": { "podSelector": {}, "ingress": [{ "from": [{ "podSelector": {} }] }] },
        }))?;
    }
    kc.wait_watched(
        "networkpolicy",
        if same_namespace { 2 } else { 1 },
        Duration::from_secs(20),
    )?;
    let node = kc.node(0);
    let with = node.conflist();
    let mut without = with.clone();
    without.plugins.retain(|p| p["type"] != "nftpol");
    assert_eq!(with.plugins.len(), without.plugins.len() + 1);
    let mut noop = without.clone();
    noop.plugins
        .push(json!({ "type": "portmap", "capabilities": { "portMappings": true } }));
    let runtime = kc.runtime().clone();

    let mut sandboxes: Vec<Sandbox> = Vec::new();
    let nftpol_conf = with
        .plugins
        .iter()
        .find(|p| p["type"] == "nftpol")
        .cloned()
        .ok_or("no nftpol in the conflist")?;
    let plugin_bin = kc.plugin_dir().join("nftpol");
    let cni_path = runtime
        .cni_path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    // `direct`: run `conf` through the harness, then time the nftpol step alone as a runtime
    // runs it; otherwise time the whole `conf` chain.
    let mut add = |name: String,
                   conf: &ConfList,
                   direct: bool|
     -> Result<f64, Box<dyn std::error::Error>> {
        let netns = Netns::create(&netns::unique_name(PREFIX, "p"))?;
        let att = Attachment {
            container_id: format!("{:064x}", sandboxes.len() + 1),
            netns_path: netns.path().to_path_buf(),
            ifname: "eth0".into(),
            pod_namespace: "bench".into(),
            pod_name: name.clone(),
        };
        kc.api().create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "namespace": "bench", "name": name, "labels": { "app": "bench" } },
            "spec": { "nodeName": node.name, "containers": [{ "name": "main", "image": "pause" }] },
            "status": { "phase": "Pending" },
        }))?;
        let start = Instant::now();
        let mut result = runtime.add(&node.netns, conf, &att)?;
        let mut ms = start.elapsed().as_secs_f64() * 1e3;
        let mut conf = conf.clone();
        if direct {
            let mut stdin = nftpol_conf.clone();
            stdin["name"] = json!(conf.name);
            stdin["cniVersion"] = json!(conf.cni_version);
            stdin["prevResult"] = result.clone();
            // Spawned and waited for like a runtime does (a blocking wait, no polling).
            let start = Instant::now();
            let mut child = std::process::Command::new(&plugin_bin)
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", &att.container_id)
                .env("CNI_NETNS", &att.netns_path)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_PATH", &cni_path)
                .env("CNI_ARGS", att.cni_args())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let Some(mut pipe) = child.stdin.take() {
                pipe.write_all(stdin.to_string().as_bytes())?;
            }
            let out = child.wait_with_output()?;
            ms = start.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                return Err(format!(
                    "direct nftpol ADD failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            result = serde_json::from_str(out.trim())?;
            conf.plugins.push(nftpol_conf.clone());
        }
        let ip = nftpol_e2e::cni::parse_result(&result, "eth0", "cni0")?.ips[0];
        kc.api().patch(
            Kind::Pod,
            Some("bench"),
            &name,
            json!({ "status": { "phase": "Running", "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] } }),
        )?;
        sandboxes.push(Sandbox {
            netns,
            att,
            conf,
            result,
        });
        Ok(ms)
    };

    // Warm-up (page cache, first bridge setup), not counted.
    add("warm-with".into(), &with, false)?;
    add("warm-without".into(), &without, false)?;
    add("warm-noop".into(), &noop, false)?;
    add("warm-direct".into(), &without, true)?;
    let chains = [
        ("without", &without, false),
        ("noop", &noop, false),
        ("with", &with, false),
        ("direct", &without, true),
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    let begin = Instant::now();
    for i in 0..pods {
        // Rotate which variant goes first.
        for k in 0..chains.len() {
            let c = (i + k) % chains.len();
            let (label, conf, direct) = chains[c];
            times[c].push(add(format!("{label}-{i}"), conf, direct)?);
        }
    }
    let elapsed = begin.elapsed();
    // The floor of the direct measurement: spawning a static no-op the same way.
    let floor: Vec<f64> = (0..pods)
        .map(|_| {
            let start = Instant::now();
            let _ = std::process::Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let [t_without, t_noop, t_with, t_direct] = &times;
    let minus = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f64>>();
    let diff = minus(t_with, t_without);
    let any_plugin = minus(t_noop, t_without);
    let own = minus(t_with, t_noop);

    let m = kc.metrics(0)?;
    let agent_sum = m
        .value("nftpol_cni_request_duration_seconds_sum{op=\"add\",result=\"ok\"}")
        .unwrap_or(0.0);
    let agent_count = m
        .value("nftpol_cni_request_duration_seconds_count{op=\"add\",result=\"ok\"}")
        .unwrap_or(0.0);
    let isolated = m.value("nftpol_isolated_pods").unwrap_or(0.0);
    // Kernel time of the agent's incremental syncs, early and late (the table grows).
    let synced: Vec<(f64, f64)> = kc
        .agent_log(0)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "table synced" && v["span"]["kind"] == "incremental")
        .filter_map(|v| {
            Some((
                v["fields"]["kernel_ms"].as_f64()?,
                v["fields"]["total_ms"].as_f64()?,
            ))
        })
        .collect();
    let lagged = kc
        .agent_log(0)
        .lines()
        .filter(|l| l.contains("the watch lags"))
        .count();

    println!(
        "\ncni_add: {pods} rounds of 4 pods on one node ({:?} plugin, {}{}), {:.1} s; the table ends with {isolated} isolated pods",
        plugin,
        if cfg!(debug_assertions) {
            "debug build of this bench"
        } else {
            "release build"
        },
        if same_namespace {
            ", same-namespace allowed"
        } else {
            ""
        },
        elapsed.as_secs_f64()
    );
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>8}",
        "CNI ADD of the chain (ms)", "p50", "p90", "p99", "max"
    );
    for (label, v) in [
        ("bridge + host-local", t_without),
        ("bridge + host-local + no-op plugin", t_noop),
        ("bridge + host-local + nftpol", t_with),
        ("added by nftpol (with - without)", &diff),
        ("added by any plugin here (no-op - without)", &any_plugin),
        ("nftpol beyond a no-op plugin (with - no-op)", &own),
        ("nftpol step alone, run directly like a runtime", t_direct),
        ("floor: /bin/true spawned the same way", &floor),
    ] {
        println!(
            "{label:<48} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            pct(v, 50.0),
            pct(v, 90.0),
            pct(v, 99.0),
            pct(v, 100.0)
        );
    }
    // The same by how full the node is (4 isolated pods per round).
    let quarter = (pods / 4).max(1);
    for (q, chunk) in t_direct.chunks(quarter).enumerate().take(4) {
        let first = q * quarter;
        println!(
            "{:<48} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            format!(
                "  direct step, {}-{} isolated pods on the node",
                4 * first + 4,
                4 * (first + chunk.len()) + 4
            ),
            pct(chunk, 50.0),
            pct(chunk, 90.0),
            pct(chunk, 99.0),
            pct(chunk, 100.0)
        );
    }
    let sync_sum = m
        .value("nftpol_sync_duration_seconds_sum{kind=\"incremental\"}")
        .unwrap_or(0.0);
    let sync_count = m
        .value("nftpol_sync_duration_seconds_count{kind=\"incremental\"}")
        .unwrap_or(0.0);
    if sync_count > 0.0 {
        println!(
            "agent side (nftpol_sync_duration_seconds, incremental): mean {:.2} ms over {sync_count} syncs",
            sync_sum / sync_count * 1e3
        );
    }
    if synced.len() >= 20 {
        let tenth = synced.len() / 10;
        let mean = |v: &[(f64, f64)]| {
            let n = v.len() as f64;
            (
                v.iter().map(|x| x.0).sum::<f64>() / n,
                v.iter().map(|x| x.1).sum::<f64>() / n,
            )
        };
        let deciles: Vec<String> = synced
            .chunks(tenth)
            .take(10)
            .map(|c| format!("{:.2}", mean(c).0))
            .collect();
        let (_, t_first) = mean(&synced[..tenth]);
        let (_, t_last) = mean(&synced[synced.len() - tenth..]);
        println!(
            "agent incremental syncs ({} as the table fills): kernel ms per tenth [{}]; total first/last tenth {t_first:.2} / {t_last:.2} ms",
            synced.len(),
            deciles.join(", ")
        );
    }
    if agent_count > 0.0 {
        println!(
            "agent side (nftpol_cni_request_duration_seconds, ADD ok): mean {:.2} ms over {agent_count} requests ({lagged} fetched the pod from the API server)",
            agent_sum / agent_count * 1e3
        );
    }
    for (label, v) in [
        ("nftpol step run directly", t_direct),
        ("with - without, in this harness", &diff),
    ] {
        let p99 = pct(v, 99.0);
        println!(
            "target: nftpol adds < 10 ms at p99 ({label}): {} ({p99:.2} ms)",
            if p99 < 10.0 { "met" } else { "NOT met" }
        );
    }
    println!();

    // DEL like the runtime, newest first, then the sandboxes go.
    for s in sandboxes.iter().rev() {
        if let Err(e) = runtime.del(&node.netns, &s.conf, &s.att, Some(&s.result)) {
            eprintln!("DEL {}: {e}", s.att.pod_name);
        }
        s.netns.delete()?;
    }
    drop(kc);
    Ok(())
}

/// The `p`th percentile (nearest rank) of `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}
