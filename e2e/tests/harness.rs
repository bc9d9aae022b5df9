//! Real-kernel tests of the harness itself: without any policy, the cluster it builds behaves
//! like a Kubernetes pod network, its probes see drops where nftables drops, and it leaves
//! nothing behind.
//!
//! Address plan (see the crate docs): node `i` is `10.0.0.(i+1)` / `fd00::(i+1)` on the
//! underlay, its pods get `10.244.i.x` / `fd00:10:244:i::x`, Service IPs are `10.96.0.x` /
//! `fd00:10:96::x`, external hosts `10.0.0.200+`. Pods serve TCP 80 and UDP 53 unless a test
//! says otherwise. Every test needs root and skips loudly without it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use nftpol_e2e::cni::CniError;
use nftpol_e2e::{
    Cluster, ClusterError, Endpoint, Family, Flood, Matrix, Netns, Outcome, PodSpec, Proto,
    Service, probe, service_ip, skip_unless_root, spoof_probe,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(1);
const WEB: (Proto, u16) = (Proto::Tcp, 80);
const DNS: (Proto, u16) = (Proto::Udp, 53);

/// `table inet e2e_probe` with a forward filter chain holding `rules` (the test's own table).
fn probe_table(rules: &str) -> String {
    format!(
        "table inet e2e_probe {{\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\t{rules}\n\t}}\n}}\n"
    )
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The addresses the kernel has on a pod's eth0 (global scope).
fn kernel_addrs(netns: &Netns) -> Vec<IpAddr> {
    let out = netns
        .exec_checked("ip", ["-j", "addr", "show", "dev", "eth0"])
        .unwrap();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut ips: Vec<IpAddr> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| a["local"].as_str().unwrap().parse().unwrap())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

#[test]
fn without_policy_every_pod_node_and_host_reaches_every_pod_dual_stack() {
    skip_unless_root!("without_policy_every_pod_node_and_host_reaches_every_pod_dual_stack");
    nftpol_e2e::init_logging();
    let built = Instant::now();
    let cluster = Cluster::builder("hx-open")
        .nodes(2)
        .dual_stack(true)
        .build()
        .unwrap();
    eprintln!(
        "figure: 2-node dual-stack cluster built in {:?}",
        built.elapsed()
    );
    let mut specs = Vec::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            specs.push(PodSpec::new(ns, pod).on((n + p) % 2).label("pod", pod));
        }
    }
    let setup = Instant::now();
    let pods = cluster.add_pods(specs).unwrap();
    eprintln!(
        "figure: 9 pods on 2 nodes via CNI ADD in {:?}",
        setup.elapsed()
    );
    for pod in &pods {
        pod.serve_all(&[WEB, DNS]).unwrap();
        // The CNI result the harness reports is what the kernel has.
        assert_eq!(kernel_addrs(&pod.netns), pod.ips, "pod {}", pod.key());
        assert_eq!(pod.ips.len(), 2, "pod {} is dual-stack", pod.key());
        let node = cluster.node(pod.node());
        assert!(node.has_link(&pod.host_veth), "host veth of {}", pod.key());
        assert!(nftpol_e2e::ipnet::IpNet::V4(node.pod_cidr_v4).contains(&pod.ipv4().unwrap()));
    }
    let host = cluster.add_host("ext").unwrap();

    let matrix = Matrix::new(TIMEOUT)
        .rows(&pods)
        .rows(cluster.nodes())
        .row(&host)
        .pod_cols(&pods, Family::V4)
        .pod_cols(&pods, Family::V6)
        .case(WEB.0, WEB.1)
        .case(DNS.0, DNS.1)
        .case(Proto::Icmp, 0);
    let result = matrix.run();
    eprintln!(
        "figure: {} probes (12 sources x 18 addresses x tcp/udp/icmp) in {:?}",
        result.cells().count(),
        result.elapsed
    );
    result.assert(|_| Outcome::Connected);

    // Nothing listens on 81: the pod's kernel answers with a reset / port unreachable.
    let a = &pods[0];
    let b = &pods[1];
    assert_eq!(
        probe(a, b.ipv4().unwrap(), Proto::Tcp, 81, TIMEOUT),
        Outcome::Refused
    );
    assert_eq!(
        probe(a, b.ipv6().unwrap(), Proto::Udp, 81, TIMEOUT),
        Outcome::Refused
    );
    // The servers saw the pods' own addresses (no NAT anywhere).
    let web_b = b.netns.server(Proto::Tcp, 80).unwrap();
    assert!(web_b.received_from(a.ipv4().unwrap()));
    assert!(web_b.received_from(a.ipv6().unwrap()));
    assert!(web_b.received_from(host.ip(Family::V4).unwrap()));

    // The Kubernetes objects describe what runs.
    let objects = cluster.kube_objects();
    let items = objects["items"].as_array().unwrap();
    let pod_obj = items
        .iter()
        .find(|o| {
            o["kind"] == "Pod" && o["metadata"]["namespace"] == "y" && o["metadata"]["name"] == "b"
        })
        .unwrap();
    let yb = cluster.pod("y", "b").unwrap();
    assert_eq!(
        pod_obj["status"]["podIPs"],
        json!([{ "ip": yb.ips[0].to_string() }, { "ip": yb.ips[1].to_string() }])
    );
    assert_eq!(pod_obj["spec"]["nodeName"], cluster.node(yb.node()).name);
    assert_eq!(items.iter().filter(|o| o["kind"] == "Namespace").count(), 3);
    assert_eq!(items.iter().filter(|o| o["kind"] == "Node").count(), 2);

    let down = Instant::now();
    cluster.shutdown().unwrap();
    eprintln!(
        "figure: teardown (9 CNI DELs, 13 namespaces) in {:?}",
        down.elapsed()
    );
}

#[test]
fn a_drop_rule_in_a_node_forward_chain_blocks_exactly_its_cell() {
    skip_unless_root!("a_drop_rule_in_a_node_forward_chain_blocks_exactly_its_cell");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-drop")
        .nodes(2)
        .dual_stack(true)
        .build()
        .unwrap();
    let pods = cluster
        .add_pods([
            PodSpec::new("ns", "a").on(0),
            PodSpec::new("ns", "b").on(0),
            PodSpec::new("ns", "c").on(1),
        ])
        .unwrap();
    for pod in &pods {
        pod.serve_all(&[WEB, DNS]).unwrap();
    }
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    // Same node (bridged on cni0, IPv4) and cross node (routed into node-1, IPv6).
    let a4 = a.ipv4().unwrap();
    let b4 = b.ipv4().unwrap();
    let a6 = a.ipv6().unwrap();
    let c6 = c.ipv6().unwrap();
    cluster
        .node(0)
        .netns
        .nft_apply(&probe_table(&format!(
            "ip saddr {a4} ip daddr {b4} tcp dport 80 drop"
        )))
        .unwrap();
    cluster
        .node(1)
        .netns
        .nft_apply(&probe_table(&format!(
            "ip6 saddr {a6} ip6 daddr {c6} udp dport 53 drop"
        )))
        .unwrap();
    assert!(
        cluster
            .node(0)
            .ruleset()
            .unwrap()
            .contains("table inet e2e_probe")
    );

    let result = Matrix::new(TIMEOUT)
        .rows(&pods)
        .row(cluster.node(0))
        .pod_cols(&pods, Family::V4)
        .pod_cols(&pods, Family::V6)
        .case(WEB.0, WEB.1)
        .case(DNS.0, DNS.1)
        .run();
    eprintln!(
        "figure: {} probes with 2 blocked cells (1 s timeout) in {:?}",
        result.cells().count(),
        result.elapsed
    );
    result.assert(|cell| {
        let blocked = (cell.from == "ns/a" && cell.to_ip == b4 && cell.proto == Proto::Tcp)
            || (cell.from == "ns/a" && cell.to_ip == c6 && cell.proto == Proto::Udp);
        Outcome::from(!blocked)
    });

    // Control: without br_netfilter the bridged packet never reaches the inet forward hook.
    cluster
        .node(0)
        .netns
        .sysctl("net.bridge.bridge-nf-call-iptables", "0")
        .unwrap();
    assert_eq!(probe(a, b4, Proto::Tcp, 80, TIMEOUT), Outcome::Connected);
    cluster
        .node(0)
        .netns
        .sysctl("net.bridge.bridge-nf-call-iptables", "1")
        .unwrap();
    assert_eq!(probe(a, b4, Proto::Tcp, 80, TIMEOUT), Outcome::Blocked);
}

#[test]
fn service_dnat_reaches_backends_and_forward_sees_the_backend_address() {
    skip_unless_root!("service_dnat_reaches_backends_and_forward_sees_the_backend_address");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-svc")
        .nodes(2)
        .dual_stack(true)
        .build()
        .unwrap();
    let pods = cluster
        .add_pods([
            PodSpec::new("ns", "client").on(0),
            PodSpec::new("ns", "near").on(0),
            PodSpec::new("ns", "far").on(1),
        ])
        .unwrap();
    let (client, near, far) = (&pods[0], &pods[1], &pods[2]);
    for backend in [near, far] {
        backend
            .serve_all(&[(Proto::Tcp, 8080), (Proto::Udp, 5353)])
            .unwrap();
    }
    let svc_near = service_ip(Family::V4, 10);
    let svc_far = service_ip(Family::V4, 11);
    let svc_far6 = service_ip(Family::V6, 11);
    let svc_dns = service_ip(Family::V4, 12);
    for (ip, backend, proto, port, target) in [
        (svc_near, near.ipv4(), Proto::Tcp, 80, 8080),
        (svc_far, far.ipv4(), Proto::Tcp, 80, 8080),
        (svc_far6, far.ipv6(), Proto::Tcp, 80, 8080),
        (svc_dns, far.ipv4(), Proto::Udp, 53, 5353),
    ] {
        cluster
            .add_service(
                Service::new(&format!("ns/{ip}"), proto, ip, port)
                    .backend(backend.unwrap(), target),
            )
            .unwrap();
    }
    assert!(
        cluster
            .node(1)
            .ruleset()
            .unwrap()
            .contains("table inet e2e_svc")
    );

    let result = Matrix::new(TIMEOUT)
        .row(client)
        .row(cluster.node(0))
        .col("svc-near", svc_near)
        .col("svc-far", svc_far)
        .col("svc-far6", svc_far6)
        .case(Proto::Tcp, 80)
        .run();
    result.assert(|_| Outcome::Connected);
    assert_eq!(
        probe(client, svc_dns, Proto::Udp, 53, TIMEOUT),
        Outcome::Connected
    );
    // The backends saw the client's own address: DNAT only, no SNAT.
    let far_web = far.netns.server(Proto::Tcp, 8080).unwrap();
    assert!(far_web.received_from(client.ipv4().unwrap()));
    assert!(far_web.received_from(client.ipv6().unwrap()));
    assert!(
        near.netns
            .server(Proto::Tcp, 8080)
            .unwrap()
            .received_from(client.ipv4().unwrap())
    );

    // Hairpin: a backend reaching itself through its Service is masqueraded to its node.
    assert_eq!(
        probe(near, svc_near, Proto::Tcp, 80, TIMEOUT),
        Outcome::Connected
    );
    let gateway = cluster.node(0).gateway(Family::V4).unwrap();
    assert!(
        near.netns
            .server(Proto::Tcp, 8080)
            .unwrap()
            .received_from(gateway)
    );

    // A forward rule on the backend's pod address (not the ClusterIP) blocks the Service:
    // forward runs after DNAT.
    let far4 = far.ipv4().unwrap();
    cluster
        .node(1)
        .netns
        .nft_apply(&probe_table(&format!(
            "ip daddr {far4} tcp dport 8080 drop"
        )))
        .unwrap();
    assert_eq!(
        probe(client, svc_far, Proto::Tcp, 80, TIMEOUT),
        Outcome::Blocked
    );
    assert_eq!(
        probe(client, svc_far6, Proto::Tcp, 80, TIMEOUT),
        Outcome::Connected
    );
    assert_eq!(
        probe(client, svc_near, Proto::Tcp, 80, TIMEOUT),
        Outcome::Connected
    );
}

#[test]
fn cni_del_removes_the_veth_and_releases_the_addresses() {
    skip_unless_root!("cni_del_removes_the_veth_and_releases_the_addresses");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-del").dual_stack(true).build().unwrap();
    let node = cluster.node(0);
    let keep = cluster.add_pod(PodSpec::new("ns", "keep")).unwrap();
    let pod = cluster.add_pod(PodSpec::new("ns", "gone")).unwrap();
    pod.serve(Proto::Tcp, 80).unwrap();
    assert_eq!(
        probe(&keep, pod.ipv4().unwrap(), Proto::Tcp, 80, TIMEOUT),
        Outcome::Connected
    );
    assert!(node.has_link(&pod.host_veth));
    let leases = node.ipam_leases();
    for ip in pod.ips.iter().chain(&keep.ips) {
        assert!(leases.contains(ip), "lease of {ip} in {leases:?}");
    }
    cluster.check_pod(&pod).unwrap();

    cluster.delete_pod(&pod).unwrap();
    assert!(
        !node.has_link(&pod.host_veth),
        "host veth {} left",
        pod.host_veth
    );
    let leases = node.ipam_leases();
    for ip in &pod.ips {
        assert!(!leases.contains(ip), "lease of {ip} left: {leases:?}");
    }
    for ip in &keep.ips {
        assert!(
            leases.contains(ip),
            "lease of the other pod {ip} gone: {leases:?}"
        );
    }
    assert!(!netns_exists(pod.netns.name()));
    assert!(cluster.pod("ns", "gone").is_none());
    assert!(matches!(
        cluster.check_pod(&pod),
        Err(ClusterError::Invalid(_))
    ));
    // The next pod can be created and reached.
    let again = cluster.add_pod(PodSpec::new("ns", "gone")).unwrap();
    again.serve(Proto::Tcp, 80).unwrap();
    assert_eq!(
        probe(&keep, again.ipv4().unwrap(), Proto::Tcp, 80, TIMEOUT),
        Outcome::Connected
    );
}

/// A chained plugin that records what the runtime gives it, passes the result through on ADD,
/// and at DEL records whether the host veth still exists (it must: DEL runs in reverse order).
const RECORD_PLUGIN: &str = r#"#!/bin/sh
conf=$(cat)
log=$(printf '%s' "$conf" | jq -r .logFile)
veth=$(printf '%s' "$conf" | jq -r '.prevResult.interfaces[1].name // empty')
present=no
[ -n "$veth" ] && ip link show dev "$veth" >/dev/null 2>&1 && present=yes
jq -nc --arg cmd "$CNI_COMMAND" --arg args "$CNI_ARGS" --arg netns "$CNI_NETNS" \
  --arg ifname "$CNI_IFNAME" --arg id "$CNI_CONTAINERID" --arg path "$CNI_PATH" \
  --arg veth_present "$present" --argjson conf "$conf" \
  '{cmd:$cmd,args:$args,netns:$netns,ifname:$ifname,id:$id,path:$path,veth_present:$veth_present,conf:$conf}' >> "$log"
if [ "$CNI_COMMAND" = ADD ]; then printf '%s' "$conf" | jq -c .prevResult; fi
"#;

const FAIL_PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"policy not ready","details":"agent unreachable"}'
  echo "fail plugin: refusing" >&2
  exit 1
fi
"#;

/// A directory with the test plugins, removed when dropped (also on panic).
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("nftpol-e2e-plugins-")
        .tempdir()
        .unwrap();
    for (name, text) in [("e2e-record", RECORD_PLUGIN), ("e2e-fail", FAIL_PLUGIN)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn chained_plugins_get_the_runtime_protocol_add_check_del() {
    skip_unless_root!("chained_plugins_get_the_runtime_protocol_add_check_del");
    nftpol_e2e::init_logging();
    let plugins = plugin_dir();
    let dir = plugins.path();
    let log = dir.join("calls.jsonl");
    let cluster = Cluster::builder("hx-chain")
        .cni_path_prepend(dir)
        .chain_plugin(json!({ "type": "e2e-record", "logFile": log.display().to_string() }))
        .build()
        .unwrap();
    let node = cluster.node(0);
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    assert_eq!(on_disk["plugins"][1]["type"], "e2e-record");

    let pod = cluster.add_pod(PodSpec::new("team-a", "web-0")).unwrap();
    cluster.check_pod(&pod).unwrap();
    cluster.delete_pod(&pod).unwrap();

    let calls: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cmds: Vec<&str> = calls.iter().map(|c| c["cmd"].as_str().unwrap()).collect();
    assert_eq!(cmds, ["ADD", "CHECK", "DEL"]);
    for call in &calls {
        assert_eq!(
            call["args"],
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={}",
                pod.container_id
            )
        );
        assert_eq!(call["netns"], format!("/run/netns/{}", pod.netns.name()));
        assert_eq!(call["ifname"], "eth0");
        assert_eq!(call["id"], pod.container_id);
        assert_eq!(call["path"], format!("{}:/usr/lib/cni", dir.display()));
        assert_eq!(call["conf"]["name"], "nftpol-e2e");
        assert_eq!(call["conf"]["cniVersion"], "1.0.0");
        // bridge's result (ADD) or the cached final result (CHECK, DEL).
        let prev_ips: Vec<&str> = call["conf"]["prevResult"]["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap())
            .collect();
        assert_eq!(prev_ips, [format!("{}/24", pod.ipv4().unwrap())]);
    }
    // DEL ran in reverse order: bridge had not removed the veth yet when we ran.
    assert_eq!(calls[2]["veth_present"], "yes");
    assert!(!node.has_link(&pod.host_veth));
}

#[test]
fn a_failing_plugin_error_is_surfaced_and_the_pod_is_cleaned_up() {
    skip_unless_root!("a_failing_plugin_error_is_surfaced_and_the_pod_is_cleaned_up");
    nftpol_e2e::init_logging();
    let plugins = plugin_dir();
    let dir = plugins.path();
    let cluster = Cluster::builder("hx-fail")
        .cni_path_prepend(dir)
        .chain_plugin(json!({ "type": "e2e-fail" }))
        .build()
        .unwrap();
    let err = cluster.add_pod(PodSpec::new("ns", "a")).unwrap_err();
    let ClusterError::Cni { pod, source } = &err else {
        panic!("unexpected error: {err:?}");
    };
    let CniError::Plugin(failure) = source.as_ref() else {
        panic!("unexpected error: {err:?}");
    };
    assert_eq!(pod, "ns/a");
    assert_eq!(failure.plugin, "e2e-fail");
    assert_eq!(failure.code, Some(7));
    assert_eq!(failure.msg, "policy not ready");
    assert_eq!(failure.details.as_deref(), Some("agent unreachable"));
    assert!(failure.stderr.contains("refusing"));
    let text = err.to_string();
    assert!(
        text.contains("e2e-fail") && text.contains("policy not ready"),
        "{text}"
    );
    // The runtime's cleanup DEL released bridge's address and veth; no pod namespace is left.
    let node = cluster.node(0);
    assert_eq!(node.ipam_leases(), Vec::<IpAddr>::new());
    let ports = node
        .netns
        .ip(&["-o", "link", "show", "master", "cni0"])
        .unwrap();
    assert_eq!(ports.stdout.trim(), "", "bridge ports left");
    assert!(cluster.pods().is_empty());
    assert_eq!(cluster.netns_names().len(), 2, "underlay and node only");

    // An unknown plugin type is reported with the search path.
    let missing = Cluster::builder("hx-fail")
        .chain_plugin(json!({ "type": "no-such-plugin" }))
        .build()
        .unwrap();
    let err = missing.add_pod(PodSpec::new("ns", "a")).unwrap_err();
    assert!(
        matches!(&err, ClusterError::Cni { source, .. }
            if matches!(source.as_ref(), CniError::PluginNotFound { plugin, .. } if plugin == "no-such-plugin")),
        "{err}"
    );
}

#[test]
fn forged_source_datagrams_arrive_with_the_forged_address() {
    skip_unless_root!("forged_source_datagrams_arrive_with_the_forged_address");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-spoof").nodes(2).build().unwrap();
    let pods = cluster
        .add_pods([
            PodSpec::new("ns", "liar").on(0),
            PodSpec::new("ns", "victim").on(0),
            PodSpec::new("ns", "target").on(1),
        ])
        .unwrap();
    let (liar, victim, target) = (&pods[0], &pods[1], &pods[2]);
    target.serve(Proto::Udp, 5353).unwrap();
    let target_ip = target.ipv4().unwrap();
    let victim_ip = victim.ipv4().unwrap();
    let foreign: IpAddr = "10.244.0.250".parse().unwrap();
    for forged in [victim_ip, foreign] {
        assert_eq!(
            spoof_probe(liar, forged, target, target_ip, 5353, TIMEOUT).unwrap(),
            Outcome::Connected,
            "datagram from {forged}"
        );
    }
    let server = target.netns.server(Proto::Udp, 5353).unwrap();
    assert!(server.received_from(victim_ip));
    assert!(!server.received_from(liar.ipv4().unwrap()));
    // A forward rule on the forged source drops it (on the liar's node, where it is forwarded).
    cluster
        .node(0)
        .netns
        .nft_apply(&probe_table(&format!(
            "ip saddr {victim_ip} udp dport 5353 drop"
        )))
        .unwrap();
    assert_eq!(
        spoof_probe(liar, victim_ip, target, target_ip, 5353, TIMEOUT).unwrap(),
        Outcome::Blocked
    );
    assert_eq!(
        spoof_probe(liar, foreign, target, target_ip, 5353, TIMEOUT).unwrap(),
        Outcome::Connected
    );
    assert!(
        spoof_probe(liar, foreign, target, target_ip, 9, TIMEOUT).is_err(),
        "no server on 9"
    );
}

#[test]
fn a_flood_records_successes_only_once_the_target_answers() {
    skip_unless_root!("a_flood_records_successes_only_once_the_target_answers");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-flood").nodes(2).build().unwrap();
    let pods = cluster
        .add_pods([
            PodSpec::new("ns", "prober").on(0),
            PodSpec::new("ns", "late").on(1),
        ])
        .unwrap();
    let (prober, late) = (&pods[0], &pods[1]);
    let to = SocketAddr::new(late.ipv4().unwrap(), 9000);
    // Dropped, not refused, until the rule goes: like a pod not yet reachable.
    cluster
        .node(1)
        .netns
        .nft_apply(&probe_table("tcp dport 9000 drop"))
        .unwrap();
    late.serve(Proto::Tcp, 9000).unwrap();
    let flood = Flood::start(prober, Proto::Tcp, to, Duration::from_millis(100), 4).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let opened = Instant::now();
    cluster
        .node(1)
        .netns
        .nft(&["delete", "table", "inet", "e2e_probe"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let report = flood.stop();
    eprintln!(
        "figure: flood made {} attempts in {:?}, {} successes, first {:?} after the rule went",
        report.attempts,
        report.stopped - report.started,
        report.successes.len(),
        report
            .first_success()
            .map(|t| t.saturating_duration_since(opened))
    );
    assert_eq!(report.successes_before(opened), 0);
    assert!(report.successes.len() >= 5, "{report:?}");
    assert!(report.attempts > report.successes.len() as u64);
}

#[test]
fn programs_run_inside_a_node_and_processes_stop_with_it() {
    skip_unless_root!("programs_run_inside_a_node_and_processes_stop_with_it");
    nftpol_e2e::init_logging();
    let cluster = Cluster::builder("hx-exec").build().unwrap();
    let node = cluster.node(0);
    let out = node
        .netns
        .exec_checked("ip", ["-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(out.stdout.contains("10.0.0.1/24"), "{out}");
    assert_eq!(
        node.netns
            .sysctl_get("net.bridge.bridge-nf-call-iptables")
            .unwrap(),
        "1"
    );
    assert_eq!(node.netns.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    // Failures carry what the program printed.
    let err = node
        .netns
        .nft(&["list", "table", "inet", "nope"])
        .unwrap_err();
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
    let nonzero = node
        .netns
        .exec("sh", ["-c", "echo out; echo err >&2; exit 3"])
        .unwrap();
    assert_eq!(nonzero.status.code(), Some(3));
    assert_eq!(
        (nonzero.stdout.trim(), nonzero.stderr.trim()),
        ("out", "err")
    );

    let mut cmd = node.netns.command("sh");
    cmd.args(["-c", "ip -o link show dev eth0; exec sleep 600"]);
    let daemon = node.netns.start("sleeper", cmd).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(daemon.is_running());
    assert!(daemon.stdout().contains("eth0"), "{}", daemon.stdout());
    cluster.shutdown().unwrap();
    assert!(!daemon.is_running());
    assert!(daemon.exit_status().is_some());
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    skip_unless_root!("everything_is_removed_on_drop_and_on_panic");
    nftpol_e2e::init_logging();
    let names = std::sync::Mutex::new(Vec::new());
    let state = std::sync::Mutex::new(None);
    let panicked = std::panic::catch_unwind(|| {
        let cluster = Cluster::builder("hx-panic").nodes(2).build().unwrap();
        let pod = cluster.add_pod(PodSpec::new("ns", "a").on(1)).unwrap();
        pod.serve(Proto::Tcp, 80).unwrap();
        cluster.add_host("ext").unwrap();
        *names.lock().unwrap() = cluster.netns_names();
        *state.lock().unwrap() = Some(cluster.state_dir().to_path_buf());
        panic!("test failure inside the cluster's scope");
    });
    assert!(panicked.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 5, "underlay, 2 nodes, pod, host: {names:?}");
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind");
    }
    assert!(!state.into_inner().unwrap().unwrap().exists());

    let cluster = Cluster::builder("hx-drop-all").build().unwrap();
    cluster.add_pod(PodSpec::new("ns", "a")).unwrap();
    let names = cluster.netns_names();
    let state = cluster.state_dir().to_path_buf();
    drop(cluster);
    for name in &names {
        assert!(!netns_exists(name), "{name} left behind");
    }
    assert!(!state.exists());
}

#[test]
fn leftovers_of_a_crashed_run_are_removed_by_the_next() {
    skip_unless_root!("leftovers_of_a_crashed_run_are_removed_by_the_next");
    nftpol_e2e::init_logging();
    // A pid that no longer exists: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let stale_name = format!("hx-stale-{dead}-0-n0");
    let stale = Netns::create(&stale_name).unwrap();
    let stale_state = Path::new("/run/nftpol-e2e").join(format!("hx-stale-{dead}-0"));
    std::fs::create_dir_all(&stale_state).unwrap();
    // A namespace of this (live) process with the same prefix must survive.
    let live = Netns::create(&nftpol_e2e::netns::unique_name("hx-stale", "live")).unwrap();

    let cluster = Cluster::builder("hx-stale").build().unwrap();
    assert!(!netns_exists(&stale_name), "stale namespace not removed");
    assert!(!stale_state.exists(), "stale state not removed");
    assert!(
        netns_exists(live.name()),
        "a live run's namespace was removed"
    );
    assert!(!stale.exists());
    drop(cluster);
    live.delete().unwrap();
    assert!(!netns_exists(live.name()));
}

#[test]
fn the_closure_runner_sees_the_namespace() {
    skip_unless_root!("the_closure_runner_sees_the_namespace");
    let ns = Netns::create(&nftpol_e2e::netns::unique_name("hx-run", "solo")).unwrap();
    ns.ip(&[
        "link", "add", "dummy7", "type", "veth", "peer", "name", "dummy8",
    ])
    .unwrap();
    // The closure's thread sees the namespace's interfaces (/proc/thread-self/net is per
    // thread; /proc/self/net would show the main thread's).
    let dev = "/proc/thread-self/net/dev";
    let has_dummy = ns
        .run(|| std::fs::read_to_string(dev).unwrap().contains("dummy7"))
        .unwrap();
    assert!(has_dummy);
    assert!(!std::fs::read_to_string(dev).unwrap().contains("dummy7"));
    let handle = ns
        .spawn("counter", || {
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/accept_dad").unwrap()
        })
        .unwrap();
    assert_eq!(handle.join().unwrap().trim(), "0");
    assert_eq!(ns.label(), ns.name());
    let name = ns.name().to_string();
    drop(ns);
    assert!(!netns_exists(&name));
}
