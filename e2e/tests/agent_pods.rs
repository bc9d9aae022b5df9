//! End-to-end: pods start, are checked and go away through the chained nftpol CNI plugin and
//! the node agent, as under a real kubelet and container runtime.
//!
//! - A pod of a default-deny namespace is never reachable, not even while its CNI ADD runs:
//!   its servers listen before the ADD, and floods aimed at the address it is about to get
//!   start before the ADD, so any moment of exposure would show as a completed connection.
//! - With the agent down, ADD fails fast with CNI error 11 naming the socket (the runtime
//!   retries), DEL still succeeds, and the retried ADD works once the agent is back.
//! - The main `nftpol` binary works as the plugin too: ADD, CHECK, DEL; the agent's metrics
//!   count the requests and the transactions.
//!
//! Needs root and the built binaries (`cargo build --bin nftpol -p nftpol` and `cargo build
//! -p nftpol-cni`); skips loudly when not root.

mod agent_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use agent_support::*;
use nftpol_e2e::cni::{Attachment, CniCommand, CniError};
use nftpol_e2e::kube_cluster::{KubeClusterError, PluginBinary, agent_socket, next_pod_ipv4};
use nftpol_e2e::{ClusterError, Flood, Outcome, PodSpec, Proto, skip_unless_root};
use serde_json::json;

#[test]
fn a_new_pod_in_a_default_deny_namespace_is_never_reachable_not_even_while_its_cni_add_runs() {
    skip_unless_root!(
        "a_new_pod_in_a_default_deny_namespace_is_never_reachable_not_even_while_its_cni_add_runs"
    );
    let kc = cluster("agent-new-pod");
    kc.create_namespace("tenant", []).unwrap();
    kc.apply(default_deny_ingress("tenant")).unwrap();
    let clients = kc
        .add_pods([
            PodSpec::new("other", "near").on(0),
            PodSpec::new("other", "far").on(1),
        ])
        .unwrap();
    // Both agents know the policy before the pod exists (as in a real cluster, a policy
    // written a moment before the pod may still be on its way to the node).
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();

    // The address host-local will hand out next on node-0: aim at it before the pod exists.
    let ip = IpAddr::V4(next_pod_ipv4(kc.node(0)));
    let flood = |from, proto, port| {
        Flood::start(from, proto, sock(ip, port), Duration::from_millis(100), 8).unwrap()
    };
    let floods = vec![
        flood(&clients[0], Proto::Tcp, 8080),
        flood(&clients[1], Proto::Tcp, 8080),
        flood(&clients[0], Proto::Udp, 5353),
        flood(&clients[1], Proto::Udp, 5353),
    ];
    let add_start = Instant::now();
    let web = kc
        .add_pod_prepared(
            PodSpec::new("tenant", "web")
                .on(0)
                .label("app", "web")
                .port("http", Proto::Tcp, 8080),
            // The "container" listens before its network exists, so the very first packet
            // that could reach it would be answered.
            |netns| {
                netns.serve(Proto::Tcp, 8080)?;
                netns.serve(Proto::Udp, 5353)?;
                Ok(())
            },
        )
        .unwrap();
    let add_ms = ms_since(add_start);
    assert_eq!(
        web.ipv4(),
        Some(ip),
        "the floods aimed at the wrong address"
    );
    // Keep flooding the running pod for a while.
    std::thread::sleep(Duration::from_secs(1));
    let reports: Vec<_> = floods.into_iter().map(Flood::stop).collect();
    for r in &reports {
        assert!(
            r.successes.is_empty(),
            "{} {} got through {} times ({} attempts); first {:?} after the ADD started",
            r.proto,
            r.target,
            r.successes.len(),
            r.attempts,
            r.first_success()
                .map(|s| s.saturating_duration_since(add_start))
        );
        assert!(r.attempts >= 10, "the flood barely ran: {r:?}");
    }
    for client in &clients {
        for server in web.netns.servers() {
            assert!(
                !server.received_from(client.ips[0]),
                "{server:?} received something from {}",
                client.key()
            );
        }
    }
    figure(
        "new pod: CNI ADD (bridge + host-local + nftpol) ms",
        format!("{add_ms:.1}"),
    );
    figure(
        "new pod: flood attempts during and after the ADD, none connected",
        reports.iter().map(|r| r.attempts).sum::<u64>(),
    );

    // Allowing the other namespace opens the pod, and the same flood now gets through: the
    // floods above could have seen an exposed pod.
    let allow_at = Instant::now();
    kc.apply(policy(
        "tenant",
        "allow-other",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{
                "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "other" } } }],
                "ports": [{ "port": "http" }, { "protocol": "UDP", "port": 5353 }],
            }],
        }),
    ))
    .unwrap();
    for client in &clients {
        let t = until_connected(client, Proto::Tcp, sock(ip, 8080));
        figure(
            &format!(
                "new pod: allow policy to first connection from {} ms",
                client.key()
            ),
            bracket(&t, allow_at),
        );
    }
    let flood = Flood::start(
        &clients[1],
        Proto::Tcp,
        sock(ip, 8080),
        Duration::from_millis(100),
        8,
    )
    .unwrap();
    let started = Instant::now();
    while started.elapsed() < WAIT && !web.netns.servers()[0].received_from(clients[1].ips[0]) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = flood.stop();
    assert!(
        !report.successes.is_empty(),
        "the flood saw no connection to the allowed pod: {report:?}"
    );
    expect(&clients[0], sock(ip, 5353), Proto::Udp, Outcome::Connected);
}

/// The plugin's failure inside a harness error.
fn plugin_failure(e: &KubeClusterError) -> &nftpol_e2e::cni::PluginFailure {
    match e {
        KubeClusterError::Cluster(ClusterError::Cni { source, .. }) => match source.as_ref() {
            CniError::Plugin(f) => f,
            other => panic!("not a plugin failure: {other}"),
        },
        other => panic!("not a CNI failure: {other}"),
    }
}

#[test]
fn with_the_agent_down_cni_add_fails_with_try_again_naming_the_socket_and_del_succeeds() {
    skip_unless_root!(
        "with_the_agent_down_cni_add_fails_with_try_again_naming_the_socket_and_del_succeeds"
    );
    let kc = cluster("agent-down");
    kc.create_namespace("app", []).unwrap();
    kc.apply(default_deny_ingress("app")).unwrap();
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("app", "old").on(0),
            PodSpec::new("other", "client").on(1),
        ])
        .unwrap();
    let (old, client) = (&pods[0], &pods[1]);
    let socket = agent_socket(kc.node(0)).display().to_string();
    let leases = kc.node(0).ipam_leases();

    // 1. Stopped cleanly (SIGTERM): the socket is gone.
    kc.stop_agent(0).unwrap();
    assert!(
        !agent_socket(kc.node(0)).exists(),
        "the agent left its socket"
    );
    let t = Instant::now();
    let err = kc.add_pod(PodSpec::new("app", "new").on(0)).unwrap_err();
    let failed_in = t.elapsed();
    let f = plugin_failure(&err);
    assert_eq!(
        (f.command, f.plugin.as_str(), f.code),
        (CniCommand::Add, "nftpol", Some(11)),
        "{f}"
    );
    assert!(
        f.msg.contains(&socket),
        "the message does not name the socket: {f}"
    );
    assert!(
        failed_in < Duration::from_secs(5),
        "ADD took {failed_in:?} to fail"
    );
    figure(
        "agent down (no socket): CNI ADD failed in ms",
        format!("{:.1}", failed_in.as_secs_f64() * 1e3),
    );
    println!("CNI error the runtime saw: {f}");
    // The runtime's cleanup released the address; the Pod is still Pending (kubelet retries).
    assert_eq!(kc.node(0).ipam_leases(), leases);
    let obj = kc
        .api()
        .get(nftpol_e2e::apiserver::Kind::Pod, Some("app"), "new")
        .unwrap();
    assert_eq!(obj["status"]["phase"], "Pending");

    // 2. Killed (SIGKILL): the socket file stays, nobody listens.
    kc.start_agent(0).unwrap();
    kc.kill_agent(0).unwrap();
    assert!(
        agent_socket(kc.node(0)).exists(),
        "a killed agent cannot remove its socket"
    );
    let t = Instant::now();
    let err = kc.add_pod(PodSpec::new("app", "new").on(0)).unwrap_err();
    let failed_in = t.elapsed();
    let f = plugin_failure(&err);
    assert_eq!(f.code, Some(11), "{f}");
    assert!(
        f.msg.contains(&socket),
        "the message does not name the socket: {f}"
    );
    assert!(
        failed_in < Duration::from_secs(5),
        "ADD took {failed_in:?} to fail"
    );
    figure(
        "agent down (stale socket): CNI ADD failed in ms",
        format!("{:.1}", failed_in.as_secs_f64() * 1e3),
    );

    // DEL works with the agent down: a running pod, and an attachment that never existed.
    kc.delete_pod(old).unwrap();
    let node = kc.node(0);
    kc.runtime()
        .del(
            &node.netns,
            &node.conflist(),
            &Attachment {
                container_id: "0123456789abcdef".repeat(4),
                netns_path: "/run/netns/nftpol-e2e-no-such-netns".into(),
                ifname: "eth0".into(),
                pod_namespace: "app".into(),
                pod_name: "ghost".into(),
            },
            None,
        )
        .unwrap();

    // 3. The agent is back: the runtime's retry succeeds and the pod is isolated; the pod
    // deleted meanwhile is forgotten.
    kc.start_agent(0).unwrap();
    let new = kc
        .add_pod_prepared(PodSpec::new("app", "new").on(0), |netns| {
            netns.serve(Proto::Tcp, 80)?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    expect(client, sock(new.ips[0], 80), Proto::Tcp, Outcome::Blocked);
    expect(
        kc.node(0),
        sock(new.ips[0], 80),
        Proto::Tcp,
        Outcome::Connected,
    );
    let table = kc.table(0).unwrap().unwrap();
    assert!(
        !table.contains(&old.ips[0].to_string()),
        "the deleted pod {} is still in the table:\n{table}",
        old.ips[0]
    );
}

#[test]
fn the_main_binary_serves_as_the_plugin_and_check_of_running_pods_succeeds_and_metrics_count_it_all()
 {
    skip_unless_root!(
        "the_main_binary_serves_as_the_plugin_and_check_of_running_pods_succeeds_and_metrics_count_it_all"
    );
    let kc = builder("agent-main-plugin")
        .plugin(PluginBinary::Main)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    kc.apply(default_deny_ingress("app")).unwrap();
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("app", "web").on(0),
            PodSpec::new("app", "peer").on(1),
            PodSpec::new("other", "client").on(1),
        ])
        .unwrap();
    for pod in &pods {
        pod.serve(Proto::Tcp, 80).unwrap();
    }
    // Enforced through the main binary's ADD: isolated pods, the unisolated one is open.
    expect(
        &pods[2],
        sock(pods[0].ips[0], 80),
        Proto::Tcp,
        Outcome::Blocked,
    );
    expect(
        &pods[2],
        sock(pods[1].ips[0], 80),
        Proto::Tcp,
        Outcome::Blocked,
    );
    expect(
        &pods[0],
        sock(pods[2].ips[0], 80),
        Proto::Tcp,
        Outcome::Connected,
    );
    for pod in &pods {
        kc.check_pod(pod)
            .unwrap_or_else(|e| panic!("CHECK {}: {e}", pod.key()));
    }
    kc.delete_pod(&pods[1]).unwrap();
    for i in 0..2 {
        let m = kc
            .wait_metrics(i, WAIT, |m| {
                m.value("nftpol_cni_requests_total{op=\"check\",result=\"ok\"}")
                    .is_some()
            })
            .unwrap();
        let adds = m.value("nftpol_cni_requests_total{op=\"add\",result=\"ok\"}");
        let checks = m.value("nftpol_cni_requests_total{op=\"check\",result=\"ok\"}");
        let transactions = m.total("nftpol_transactions_total");
        println!(
            "node-{i}: cni add ok {adds:?}, check ok {checks:?}, del {}, transactions {transactions}",
            m.total("nftpol_cni_requests_total") - adds.unwrap_or(0.0) - checks.unwrap_or(0.0)
        );
        let local = pods.iter().filter(|p| p.node() == i).count() as f64;
        assert_eq!(adds, Some(local), "node-{i}: ADDs");
        assert_eq!(checks, Some(local), "node-{i}: CHECKs");
        assert!(transactions >= 2.0, "node-{i}: {transactions} transactions");
    }
    let m = kc.metrics(1).unwrap();
    assert_eq!(
        m.value("nftpol_cni_requests_total{op=\"del\",result=\"ok\"}"),
        Some(1.0)
    );
}
