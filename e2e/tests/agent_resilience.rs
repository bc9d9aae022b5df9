//! End-to-end: enforcement survives the agent and repairs the kernel.
//!
//! - Both agents SIGKILLed and restarted: probes run back to back through the whole window;
//!   allowed flows never fail, denied ones never connect, and the restarted agents find the
//!   kernel table already right (same handles, counters still counting, no transaction).
//! - An agent restarted while the API server does not answer: it keeps the old table in
//!   force, is not ready, answers ADD with try-again, and catches up with what changed
//!   meanwhile once the API server answers again.
//! - The table deleted, flushed, or given a foreign rule by hand with `nft`: the agent
//!   restores exactly what was there (nf_tables notifications, no polling), and the denied
//!   flow is denied again. The time to restore and the exposure meanwhile are printed.
//!
//! Needs root and the built binaries; skips loudly when not root.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;
use nftpol_e2e::kube_cluster::{KubeCluster, ProbeLoop};
use nftpol_e2e::{Flood, Outcome, Pod, PodSpec, Proto, skip_unless_root};
use serde_json::json;

/// The chain of the one rule of `app/web-ingress`.
const RULE_CHAIN: &str = "np_app_web-ingress_ingress_0";

struct Setup {
    kc: KubeCluster,
    web: Pod,
    friend: Pod,
    near: Pod,
    far: Pod,
}

/// `app/web` (node-0, TCP 8080) admits `role: friend` pods; `friend` on node-1, strangers
/// `near` (node-0) and `far` (node-1). Returns once both directions are enforced.
fn setup(prefix: &str) -> Setup {
    setup_with(builder(prefix))
}

fn setup_with(b: nftpol_e2e::kube_cluster::KubeClusterBuilder) -> Setup {
    let kc = b.build().unwrap_or_else(|e| panic!("{e}"));
    kc.apply(policy(
        "app",
        "web-ingress",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{
                "from": [{ "podSelector": { "matchLabels": { "role": "friend" } } }],
                "ports": [{ "protocol": "TCP", "port": 8080 }],
            }],
        }),
    ))
    .unwrap();
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("app", "web").on(0).label("app", "web"),
            PodSpec::new("app", "friend").on(1).label("role", "friend"),
            PodSpec::new("app", "near").on(0).label("role", "near"),
            PodSpec::new("app", "far").on(1),
        ])
        .unwrap();
    pods[0].serve(Proto::Tcp, 8080).unwrap();
    let mut it = pods.into_iter();
    let (Some(web), Some(friend), Some(near), Some(far)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        unreachable!()
    };
    let to = sock(web.ips[0], 8080);
    expect(&friend, to, Proto::Tcp, Outcome::Connected);
    expect(&near, to, Proto::Tcp, Outcome::Blocked);
    expect(&far, to, Proto::Tcp, Outcome::Blocked);
    Setup {
        kc,
        web,
        friend,
        near,
        far,
    }
}

/// Background probes of the allowed flow (1 s timeout: a slow answer is still an answer)
/// and of the two denied ones (200 ms: a drop costs the timeout).
fn start_probes(s: &Setup) -> [ProbeLoop; 3] {
    let to = sock(s.web.ips[0], 8080);
    let pause = Duration::from_millis(5);
    [
        ProbeLoop::start(&s.friend, Proto::Tcp, to, PROBE, pause).unwrap(),
        ProbeLoop::start(&s.near, Proto::Tcp, to, FAST_PROBE, pause).unwrap(),
        ProbeLoop::start(&s.far, Proto::Tcp, to, FAST_PROBE, pause).unwrap(),
    ]
}

/// What `nft list table` shows apart from traffic and creation order: counter values zeroed,
/// the table's chains, sets and maps sorted by name (nft lists them in creation order, which a
/// restore changes).
fn without_counters(listing: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in listing.lines() {
        let mut tokens = Vec::new();
        let mut zero = false;
        for t in line.split_whitespace() {
            tokens.push(if zero { "0" } else { t });
            zero = t == "packets" || t == "bytes";
        }
        current.push_str(&tokens.join(" "));
        current.push('\n');
        // A block of the table ends with a closing brace indented by one tab.
        if line == "\t}" {
            blocks.push(std::mem::take(&mut current));
        }
    }
    blocks.sort();
    blocks.push(current);
    blocks.concat()
}

#[test]
fn allowed_flows_keep_working_and_denied_ones_stay_denied_while_the_agents_are_killed_and_restarted()
 {
    skip_unless_root!(
        "allowed_flows_keep_working_and_denied_ones_stay_denied_while_the_agents_are_killed_and_restarted"
    );
    let s = setup("agent-kill");
    let kc = &s.kc;
    let before: Vec<Vec<String>> = (0..2)
        .map(|i| handles(&kc.table_with_handles(i).unwrap().unwrap()))
        .collect();
    let counter_before = chain_packets(&kc.table(0).unwrap().unwrap(), RULE_CHAIN).unwrap();

    let probes = start_probes(&s);
    // Some probes with the agents up, then kill both at once.
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    for i in 0..2 {
        kc.kill_agent(i).unwrap();
    }
    for i in 0..2 {
        assert!(
            kc.table(i).unwrap().is_some(),
            "node-{i}: a killed agent took its table"
        );
    }
    // The nodes run without agents for a while.
    std::thread::sleep(Duration::from_secs(1));
    let restarting = Instant::now();
    for i in 0..2 {
        kc.spawn_agent(i).unwrap();
    }
    let ready_ms: Vec<f64> = (0..2)
        .map(|i| {
            kc.wait_agent_ready(i, nftpol_e2e::kube_cluster::AGENT_READY_TIMEOUT)
                .unwrap();
            ms_since(restarting)
        })
        .collect();
    let ready = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let logs: Vec<_> = probes.into_iter().map(ProbeLoop::stop).collect();

    for log in &logs {
        println!("{}", log.summary());
    }
    let (allowed, denied) = (&logs[0], &logs[1..]);
    let failed = allowed.other_than(Outcome::Connected);
    assert!(
        failed.is_empty(),
        "the allowed flow failed {} times: {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    for log in denied {
        assert_eq!(log.count(Outcome::Connected), 0, "{}", log.summary());
    }
    for log in &logs {
        let window = log.during(killed, ready);
        assert!(
            window >= 3,
            "only {window} probes in the restart window: {}",
            log.summary()
        );
    }
    figure(
        "agents killed: down 1 s, restart to ready ms (node-0, node-1)",
        format!("{:.0}, {:.0}", ready_ms[0], ready_ms[1]),
    );
    figure(
        "agents killed: probes during kill..ready (allowed all connected, denied none)",
        format!(
            "allowed {}, denied {} + {}",
            allowed.during(killed, ready),
            denied[0].during(killed, ready),
            denied[1].during(killed, ready)
        ),
    );

    // The restarted agents found the table right: not replaced, nothing sent.
    for (i, before) in before.iter().enumerate() {
        let after = handles(&kc.table_with_handles(i).unwrap().unwrap());
        assert_eq!(&after, before, "node-{i}: table objects were re-created");
        let m = kc.metrics(i).unwrap();
        assert_eq!(
            m.total("nftpol_transactions_total"),
            0.0,
            "node-{i}:\n{}",
            m.0
        );
        assert_eq!(m.value("nftpol_kernel_drift_total"), Some(0.0));
    }
    let counter_after = chain_packets(&kc.table(0).unwrap().unwrap(), RULE_CHAIN).unwrap();
    let connections = allowed.count(Outcome::Connected) as u64;
    assert!(
        counter_after >= counter_before + connections,
        "the rule counter went from {counter_before} to {counter_after} over {connections} connections: reset"
    );
}

#[test]
fn a_table_deleted_flushed_or_altered_by_hand_is_restored_and_the_denied_flow_denied_again() {
    skip_unless_root!(
        "a_table_deleted_flushed_or_altered_by_hand_is_restored_and_the_denied_flow_denied_again"
    );
    let s = setup("agent-tamper");
    let kc = &s.kc;
    let node = &kc.node(0).netns;
    let good = without_counters(&kc.table(0).unwrap().unwrap());
    let to = sock(s.web.ips[0], 8080);

    for (what, command) in [
        ("deleted", vec!["delete", "table", "inet", "nftpol"]),
        ("flushed", vec!["flush", "table", "inet", "nftpol"]),
        (
            "given an accept-all rule",
            vec!["insert", "rule", "inet", "nftpol", "ingress", "accept"],
        ),
    ] {
        let probes = start_probes(&s);
        // Dense attempts on the denied flow, to see the exposure while the table is wrong.
        let flood = Flood::start(&s.near, Proto::Tcp, to, Duration::from_millis(20), 8).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let tampered = Instant::now();
        node.nft(&command).unwrap();
        let mut polls = 0;
        let restored_ms = loop {
            polls += 1;
            let now = kc.table(0).unwrap().map(|t| without_counters(&t));
            if now.as_deref() == Some(good.as_str()) {
                break ms_since(tampered);
            }
            assert!(
                tampered.elapsed() < WAIT,
                "table {what}: not restored after {WAIT:?}; now:\n{}",
                now.unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let denied = until_blocked(&s.near, Proto::Tcp, to);
        std::thread::sleep(Duration::from_millis(200));
        let logs: Vec<_> = probes.into_iter().map(ProbeLoop::stop).collect();
        let flood = flood.stop();
        for log in &logs {
            println!("table {what}: {}", log.summary());
        }
        assert_eq!(
            flood.successes_before(tampered),
            0,
            "table {what}: the denied flow connected before the tampering, at ms {:?} after \
             the flood started (tampering at {:.1} ms)",
            flood
                .successes
                .iter()
                .map(|t| format!("{:.1}", ms_between(flood.started, *t)))
                .collect::<Vec<_>>(),
            ms_between(flood.started, tampered)
        );
        let failed = logs[0].other_than(Outcome::Connected);
        assert!(
            failed.is_empty(),
            "table {what}: the allowed flow failed: {failed:?}"
        );
        expect(&s.far, to, Proto::Tcp, Outcome::Blocked);
        expect(&s.friend, to, Proto::Tcp, Outcome::Connected);
        figure(
            &format!("table {what}: restored (as listed by nft) after ms"),
            format!("{restored_ms:.1} ({polls} polls)"),
        );
        figure(
            &format!("table {what}: near stranger blocked again after ms"),
            bracket(&denied, tampered),
        );
        let exposed = match (flood.successes.first(), flood.successes.last()) {
            (Some(a), Some(b)) => format!(
                "{} connections between {:.1} and {:.1} ms",
                flood.successes.len(),
                a.saturating_duration_since(tampered).as_secs_f64() * 1e3,
                b.saturating_duration_since(tampered).as_secs_f64() * 1e3
            ),
            _ => "none".into(),
        };
        figure(
            &format!(
                "table {what}: exposure of the denied flow ({} attempts)",
                flood.attempts
            ),
            exposed,
        );
    }
    let m = kc.metrics(0).unwrap();
    assert!(
        m.value("nftpol_kernel_drift_total").unwrap_or(0.0) >= 3.0,
        "drift not counted: {:?}",
        m.value("nftpol_kernel_drift_total")
    );
}

#[test]
fn an_agent_restarted_while_the_api_server_is_unreachable_keeps_the_old_table_and_catches_up() {
    skip_unless_root!(
        "an_agent_restarted_while_the_api_server_is_unreachable_keeps_the_old_table_and_catches_up"
    );
    let s = setup_with(builder("agent-api-down").agent_arg("--cni-ready-timeout=1s"));
    let kc = &s.kc;
    let to = sock(s.web.ips[0], 8080);
    let before = handles(&kc.table_with_handles(0).unwrap().unwrap());

    // The API server stalls (requests are read, never answered); node-0's agent restarts.
    kc.api().pause();
    let probes = start_probes(&s);
    kc.kill_agent(0).unwrap();
    let restarted = Instant::now();
    kc.spawn_agent(0).unwrap();
    // Meanwhile someone admits `near` too: the agent cannot know yet.
    kc.apply(policy(
        "app",
        "allow-near",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "role": "near" } } }] }],
        }),
    ))
    .unwrap();
    // Not ready: it has not seen the cluster, and must not program anything.
    let err = kc
        .wait_agent_ready(0, Duration::from_secs(2))
        .expect_err("ready without the API server");
    println!("while the API server stalls: {err}");
    assert!(
        kc.agent(0).is_some_and(|p| p.is_running()),
        "the agent gave up"
    );
    // A new pod: ADD waits for readiness, then answers try-again.
    let t = Instant::now();
    let e = kc
        .add_pod(PodSpec::new("app", "late").on(0))
        .expect_err("a pod started while the agent is not ready");
    let f = match &e {
        nftpol_e2e::kube_cluster::KubeClusterError::Cluster(nftpol_e2e::ClusterError::Cni {
            source,
            ..
        }) => match source.as_ref() {
            nftpol_e2e::cni::CniError::Plugin(f) => f.clone(),
            other => panic!("{other}"),
        },
        other => panic!("{other}"),
    };
    println!("ADD while not ready ({:.0} ms): {f}", ms_since(t));
    assert_eq!(f.code, Some(11), "{f}");
    assert_eq!(
        handles(&kc.table_with_handles(0).unwrap().unwrap()),
        before,
        "the table changed while the agent had not synced"
    );
    expect(&s.near, to, Proto::Tcp, Outcome::Blocked);

    // The API server answers again: the agent syncs, `near` gets in, the retried ADD works.
    let resumed = Instant::now();
    kc.api().resume();
    kc.wait_agent_ready(0, WAIT).unwrap();
    let ready_ms = ms_since(resumed);
    let t = until_connected(&s.near, Proto::Tcp, to);
    let late = kc.add_pod(PodSpec::new("app", "late").on(0)).unwrap();
    let logs: Vec<_> = probes.into_iter().map(ProbeLoop::stop).collect();
    for log in &logs {
        println!("{}", log.summary());
    }
    let failed = logs[0].other_than(Outcome::Connected);
    assert!(failed.is_empty(), "the allowed flow failed: {failed:?}");
    assert_eq!(
        logs[2].count(Outcome::Connected),
        0,
        "{}",
        logs[2].summary()
    );
    let near_before_resume = logs[1]
        .attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Connected && a.end < resumed)
        .count();
    assert_eq!(near_before_resume, 0, "near got in before the agent synced");
    figure(
        "API server stalled: agent restart, outage length ms",
        format!(
            "{:.0}",
            resumed.saturating_duration_since(restarted).as_secs_f64() * 1e3
        ),
    );
    figure(
        "API server back -> agent ready ms",
        format!("{ready_ms:.0}"),
    );
    figure(
        "API server back -> policy written during the outage enforced ms",
        bracket(&t, resumed),
    );
    late.serve(Proto::Tcp, 8080).unwrap();
    expect(
        &s.far,
        sock(late.ips[0], 8080),
        Proto::Tcp,
        Outcome::Connected,
    );
}
