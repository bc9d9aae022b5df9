//! End-to-end: NetworkPolicies written to the API server are enforced on real traffic by the
//! node agents, change by change; invalid ones are reported as Events without breaking the
//! others; and pods cannot forge their source address to borrow someone else's allowances.
//!
//! The latency figures are measured from the API write to the start of the first probe that
//! sees the new behaviour (an upper bound; the probe before it, which still saw the old one,
//! gives the lower bound): probes run back to back, 50 ms each while waiting for a flow to
//! open, 200 ms each while waiting for it to close.
//!
//! Needs root and the built binaries; skips loudly when not root.

mod agent_support;

use std::net::IpAddr;
use std::time::Instant;

use agent_support::*;
use nftpol_e2e::kube_cluster::KubeCluster;
use nftpol_e2e::{Matrix, Outcome, Pod, PodSpec, Proto, skip_unless_root, spoof_probe};
use serde_json::{Value, json};

/// `app/web` (node-0) serving TCP 8080 and 9090; `app/friend` (node-1, `role: friend`);
/// `app/stranger` (node-0, same node as web).
fn web_and_clients(kc: &KubeCluster) -> (Pod, Pod, Pod) {
    let pods = kc
        .add_pods([
            PodSpec::new("app", "web").on(0).label("app", "web"),
            PodSpec::new("app", "friend").on(1).label("role", "friend"),
            PodSpec::new("app", "stranger").on(0),
        ])
        .unwrap();
    pods[0]
        .serve_all(&[(Proto::Tcp, 8080), (Proto::Tcp, 9090)])
        .unwrap();
    let mut it = pods.into_iter();
    let (Some(web), Some(friend), Some(stranger)) = (it.next(), it.next(), it.next()) else {
        unreachable!()
    };
    (web, friend, stranger)
}

/// `web` admits pods `role: friend` on `port` only.
fn friends_on(port: u16) -> Value {
    policy(
        "app",
        "web-ingress",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{
                "from": [{ "podSelector": { "matchLabels": { "role": "friend" } } }],
                "ports": [{ "protocol": "TCP", "port": port }],
            }],
        }),
    )
}

/// Checks friend and stranger against web on 8080 and 9090: `open(client, port)` says which
/// connect.
fn check(
    what: &str,
    web: &Pod,
    friend: &Pod,
    stranger: &Pod,
    open: impl Fn(&str, u16) -> bool + Sync,
) {
    Matrix::new(PROBE)
        .rows([friend, stranger])
        .pod_cols([web], nftpol_e2e::Family::V4)
        .case(Proto::Tcp, 8080)
        .case(Proto::Tcp, 9090)
        .run()
        .check(|c| Outcome::from(open(c.from, c.port)))
        .unwrap_or_else(|grid| panic!("{what}:\n{grid}"));
}

#[test]
fn a_policy_created_updated_and_deleted_through_the_api_server_is_enforced_at_each_step() {
    skip_unless_root!(
        "a_policy_created_updated_and_deleted_through_the_api_server_is_enforced_at_each_step"
    );
    let kc = cluster("agent-policy-life");
    let (web, friend, stranger) = web_and_clients(&kc);
    let to = |port| sock(web.ips[0], port);
    check("no policy", &web, &friend, &stranger, |_, _| true);

    // Created: only friend, only 8080.
    let t0 = Instant::now();
    kc.apply(friends_on(8080)).unwrap();
    let t = until_blocked(&stranger, Proto::Tcp, to(8080));
    figure("policy created -> stranger blocked ms", bracket(&t, t0));
    until_blocked(&friend, Proto::Tcp, to(9090));
    check(
        "created: friend on 8080",
        &web,
        &friend,
        &stranger,
        |from, port| from == "app/friend" && port == 8080,
    );

    // Updated: 9090 instead of 8080.
    let t0 = Instant::now();
    kc.apply(friends_on(9090)).unwrap();
    let t = until_connected(&friend, Proto::Tcp, to(9090));
    figure(
        "policy updated -> friend connects on 9090 ms",
        bracket(&t, t0),
    );
    until_blocked(&friend, Proto::Tcp, to(8080));
    check(
        "updated: friend on 9090",
        &web,
        &friend,
        &stranger,
        |from, port| from == "app/friend" && port == 9090,
    );

    // Deleted: open again.
    let t0 = Instant::now();
    kc.delete_policy("app", "web-ingress").unwrap();
    let t = until_connected(&stranger, Proto::Tcp, to(8080));
    figure("policy deleted -> stranger connects ms", bracket(&t, t0));
    check("deleted", &web, &friend, &stranger, |_, _| true);

    // The agent's own view: from a watch event's arrival to the kernel commit.
    let m = kc.metrics(0).unwrap();
    let sum = m
        .value("nftpol_enforcement_latency_seconds_sum{kind=\"networkpolicy\"}")
        .unwrap_or(0.0);
    let count = m
        .value("nftpol_enforcement_latency_seconds_count{kind=\"networkpolicy\"}")
        .unwrap_or(0.0);
    assert!(count >= 3.0, "node-0 enforced {count} policy changes");
    figure(
        "agent enforcement latency (watch event -> commit), policy changes on node-0, mean ms",
        format!("{:.1} over {count}", sum / count * 1e3),
    );
}

#[test]
fn an_invalid_policy_written_past_validation_raises_an_event_and_the_others_stay_enforced() {
    skip_unless_root!(
        "an_invalid_policy_written_past_validation_raises_an_event_and_the_others_stay_enforced"
    );
    let kc = cluster("agent-invalid-policy");
    let (web, friend, stranger) = web_and_clients(&kc);
    let to = |port| sock(web.ips[0], port);
    kc.apply(friends_on(8080)).unwrap();
    until_blocked(&stranger, Proto::Tcp, to(8080));

    // A new policy with a bad CIDR (the real API server would refuse it), opening web to
    // everybody on 9090 if it were read leniently...
    let t0 = Instant::now();
    let mut bad_new = policy(
        "app",
        "bad-cidr",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{ "from": [{ "ipBlock": { "cidr": "10.0.0.0/33" } }], "ports": [{ "port": 9090 }] }],
        }),
    );
    kc.apply(bad_new.clone()).unwrap();
    // ...and the valid policy updated to an invalid version (a port out of range): its last
    // valid version must stay in force.
    let mut bad_update = friends_on(8080);
    bad_update["spec"]["ingress"][0]["ports"][0]["port"] = json!(70000);
    kc.apply(bad_update).unwrap();

    let rejected = |name: &str| {
        kc.api()
            .events()
            .into_iter()
            .filter(|e| {
                e["reason"] == "NetworkPolicyRejected"
                    && e["regarding"]["name"] == name
                    && e["regarding"]["namespace"] == "app"
            })
            .collect::<Vec<_>>()
    };
    assert!(
        kc.api()
            .wait_until(WAIT, |_| !rejected("bad-cidr").is_empty()
                && !rejected("web-ingress").is_empty()),
        "no Events for the rejected policies; events: {:#?}",
        kc.api().events()
    );
    figure(
        "invalid policies written -> both Events ms",
        format!("{:.1}", ms_since(t0)),
    );
    for (name, needle) in [("bad-cidr", "cidr"), ("web-ingress", "port")] {
        let events = rejected(name);
        let note = events[0]["note"].as_str().unwrap_or_default().to_string();
        println!("Event for {name}: {} {note}", events[0]["type"]);
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            note.contains(needle),
            "the Event for {name} does not name the field: {note}"
        );
    }
    assert!(
        rejected("web-ingress")[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("last valid version")),
        "the Event should say the last valid version stays"
    );
    kc.wait_metrics(0, WAIT, |m| {
        m.value("nftpol_rejected_policies") == Some(2.0)
    })
    .unwrap();

    // Enforcement is what it was: friend on 8080 only.
    check(
        "with two rejected policies",
        &web,
        &friend,
        &stranger,
        |from, port| from == "app/friend" && port == 8080,
    );

    // The agent is not stuck: a valid change still applies, and fixing the bad one too.
    let t0 = Instant::now();
    bad_new["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] = json!("10.244.0.0/16");
    kc.apply(bad_new).unwrap();
    let t = until_connected(&stranger, Proto::Tcp, to(9090));
    figure("fixed policy -> enforced ms", bracket(&t, t0));
    check("bad-cidr fixed", &web, &friend, &stranger, |from, port| {
        port == 9090 || from == "app/friend"
    });
    kc.wait_metrics(0, WAIT, |m| {
        m.value("nftpol_rejected_policies") == Some(1.0)
    })
    .unwrap();
}

#[test]
fn a_pod_that_forges_its_source_address_is_dropped_while_its_genuine_traffic_passes() {
    skip_unless_root!(
        "a_pod_that_forges_its_source_address_is_dropped_while_its_genuine_traffic_passes"
    );
    let kc = cluster("agent-spoof");
    // db admits only `trusted` (on node-0 with the forger); open-* are selected by nothing.
    kc.apply(policy(
        "y",
        "db-from-trusted",
        json!({
            "podSelector": { "matchLabels": { "app": "db" } },
            "ingress": [{ "from": [{
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "x" } },
                "podSelector": { "matchLabels": { "role": "trusted" } },
            }] }],
        }),
    ))
    .unwrap();
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("x", "trusted").on(0).label("role", "trusted"),
            PodSpec::new("x", "evil").on(0),
            PodSpec::new("y", "db").on(1).label("app", "db"),
            PodSpec::new("y", "open-far").on(1),
            PodSpec::new("y", "open-near").on(0),
        ])
        .unwrap();
    for p in &pods {
        p.serve_all(&[(Proto::Udp, 5353), (Proto::Tcp, 80)])
            .unwrap();
    }
    let [trusted, evil, db, open_far, open_near] = &pods[..] else {
        unreachable!()
    };
    let unused_pod_ip: IpAddr = "10.244.0.250".parse().unwrap();
    let outside_ip: IpAddr = "192.0.2.77".parse().unwrap();
    let spoof =
        |forged: IpAddr, to: &Pod| spoof_probe(evil, forged, to, to.ips[0], 5353, PROBE).unwrap();
    // Controls: the forger's genuine traffic, and its own address sent the same way, arrive
    // where policy allows; db admits trusted.
    expect(
        trusted,
        sock(db.ips[0], 5353),
        Proto::Udp,
        Outcome::Connected,
    );
    expect(evil, sock(db.ips[0], 5353), Proto::Udp, Outcome::Blocked);
    for open in [open_far, open_near] {
        expect(
            evil,
            sock(open.ips[0], 5353),
            Proto::Udp,
            Outcome::Connected,
        );
        expect(evil, sock(open.ips[0], 80), Proto::Tcp, Outcome::Connected);
        assert_eq!(
            spoof(evil.ips[0], open),
            Outcome::Connected,
            "own address to {}",
            open.key()
        );
    }
    // Forged: trusted's address (allowed at db), an unused pod address, an outside address.
    // All at once: each must wait its whole timeout.
    let forged = [trusted.ips[0], unused_pod_ip, outside_ip];
    let targets = [db, open_far, open_near];
    std::thread::scope(|s| {
        let handles: Vec<_> = forged
            .iter()
            .flat_map(|f| targets.iter().map(move |t| (*f, *t)))
            .map(|(f, t)| s.spawn(move || (f, t.key(), spoof(f, t))))
            .collect();
        for h in handles {
            let (f, to, outcome) = h.join().unwrap();
            assert_eq!(outcome, Outcome::Blocked, "evil forging {f} reached {to}");
        }
    });
    // Its genuine traffic still works afterwards.
    expect(
        evil,
        sock(open_far.ips[0], 80),
        Proto::Tcp,
        Outcome::Connected,
    );

    // The drops are nftpol's: without node-0's table (agent stopped, table deleted by hand),
    // the same forged datagrams arrive, and the restarted agent drops them again.
    kc.stop_agent(0).unwrap();
    kc.node(0)
        .netns
        .nft(&["delete", "table", "inet", "nftpol"])
        .unwrap();
    assert_eq!(
        spoof(trusted.ips[0], db),
        Outcome::Connected,
        "control without table"
    );
    assert_eq!(
        spoof(unused_pod_ip, open_far),
        Outcome::Connected,
        "control without table"
    );
    kc.start_agent(0).unwrap();
    assert_eq!(
        spoof(trusted.ips[0], db),
        Outcome::Blocked,
        "after the agent restored the table"
    );
    assert_eq!(
        spoof(unused_pod_ip, open_far),
        Outcome::Blocked,
        "after the restore"
    );
    expect(
        evil,
        sock(open_far.ips[0], 80),
        Proto::Tcp,
        Outcome::Connected,
    );
}

#[test]
fn relabelling_pods_and_namespaces_through_the_api_server_moves_them_in_and_out_of_policies() {
    skip_unless_root!(
        "relabelling_pods_and_namespaces_through_the_api_server_moves_them_in_and_out_of_policies"
    );
    let kc = cluster("agent-relabel");
    kc.create_namespace("guest", []).unwrap();
    kc.apply(policy(
        "app",
        "web-ingress",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "ingress": [{ "from": [
                { "podSelector": { "matchLabels": { "role": "friend" } } },
                { "namespaceSelector": { "matchLabels": { "team": "blue" } } },
            ] }],
        }),
    ))
    .unwrap();
    kc.wait_watched("networkpolicy", 1, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("app", "web").on(0).label("app", "web"),
            PodSpec::new("app", "client").on(1),
            PodSpec::new("guest", "visitor").on(0),
        ])
        .unwrap();
    pods[0].serve(Proto::Tcp, 80).unwrap();
    let (web, client, visitor) = (&pods[0], &pods[1], &pods[2]);
    let to = sock(web.ips[0], 80);
    let labels = |kind, ns: Option<&str>, name: &str, labels: Value| {
        kc.api()
            .patch(kind, ns, name, json!({ "metadata": { "labels": labels } }))
            .unwrap();
        Instant::now()
    };
    use nftpol_e2e::apiserver::Kind;
    expect(client, to, Proto::Tcp, Outcome::Blocked);
    expect(visitor, to, Proto::Tcp, Outcome::Blocked);

    let t0 = labels(
        Kind::Pod,
        Some("app"),
        "client",
        json!({ "role": "friend" }),
    );
    let t = until_connected(client, Proto::Tcp, to);
    figure(
        "pod labelled into a peer selector -> connects ms",
        bracket(&t, t0),
    );
    let t0 = labels(Kind::Pod, Some("app"), "client", json!({ "role": null }));
    let t = until_blocked(client, Proto::Tcp, to);
    figure("pod label removed -> blocked ms", bracket(&t, t0));

    let t0 = labels(Kind::Namespace, None, "guest", json!({ "team": "blue" }));
    let t = until_connected(visitor, Proto::Tcp, to);
    figure(
        "namespace labelled into a namespace selector -> connects ms",
        bracket(&t, t0),
    );
    let t0 = labels(Kind::Namespace, None, "guest", json!({ "team": "red" }));
    let t = until_blocked(visitor, Proto::Tcp, to);
    figure("namespace relabelled out -> blocked ms", bracket(&t, t0));

    // The selected pod itself leaves the policy: nothing isolates it any more.
    let t0 = labels(Kind::Pod, Some("app"), "web", json!({ "app": "web-v2" }));
    let t = until_connected(client, Proto::Tcp, to);
    figure(
        "isolated pod relabelled out of the policy -> open ms",
        bracket(&t, t0),
    );
    expect(visitor, to, Proto::Tcp, Outcome::Connected);
    let _ = labels(Kind::Pod, Some("app"), "web", json!({ "app": "web" }));
    until_blocked(visitor, Proto::Tcp, to);
    expect(client, to, Proto::Tcp, Outcome::Blocked);
}

#[test]
fn a_pod_deleted_and_recreated_under_the_same_name_takes_nothing_from_its_predecessor() {
    skip_unless_root!(
        "a_pod_deleted_and_recreated_under_the_same_name_takes_nothing_from_its_predecessor"
    );
    let kc = cluster("agent-recreate");
    // db admits only `app/api`; api's egress is limited to db.
    kc.apply(policy(
        "app",
        "db-ingress",
        json!({
            "podSelector": { "matchLabels": { "app": "db" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "api" } } }] }],
        }),
    ))
    .unwrap();
    kc.apply(policy(
        "app",
        "api-egress",
        json!({
            "podSelector": { "matchLabels": { "app": "api" } },
            "policyTypes": ["Egress"],
            "egress": [{ "to": [{ "podSelector": { "matchLabels": { "app": "db" } } }] }],
        }),
    ))
    .unwrap();
    kc.wait_watched("networkpolicy", 2, WAIT).unwrap();
    let pods = kc
        .add_pods([
            PodSpec::new("app", "db").on(1).label("app", "db"),
            PodSpec::new("app", "api").on(0).label("app", "api"),
            PodSpec::new("app", "other").on(0),
        ])
        .unwrap();
    for p in &pods {
        p.serve(Proto::Tcp, 80).unwrap();
    }
    let (db, api, other) = (&pods[0], &pods[1], &pods[2]);
    expect(api, sock(db.ips[0], 80), Proto::Tcp, Outcome::Connected);
    expect(api, sock(other.ips[0], 80), Proto::Tcp, Outcome::Blocked);

    // `api` is recreated (as a StatefulSet would) without its label: a new sandbox, a new
    // address, and no longer an api pod. `db` must not admit it, nor its old address.
    let old_ip = api.ips[0];
    kc.delete_pod(api).unwrap();
    let api2 = kc.add_pod(PodSpec::new("app", "api").on(0)).unwrap();
    api2.serve(Proto::Tcp, 80).unwrap();
    assert_ne!(api2.ips[0], old_ip);
    expect(&api2, sock(db.ips[0], 80), Proto::Tcp, Outcome::Blocked);
    expect(
        &api2,
        sock(other.ips[0], 80),
        Proto::Tcp,
        Outcome::Connected,
    );
    for i in 0..2 {
        let table = kc.table(i).unwrap().unwrap();
        assert!(
            !table.contains(&format!("{old_ip} ")) && !table.contains(&format!("{old_ip},")),
            "node-{i} still has the deleted pod's {old_ip}:\n{table}"
        );
    }
}
