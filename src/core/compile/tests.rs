//! Unit tests of the compiler's structure and of its incremental path.
//!
//! Address plan: node `n1` hosts 10.244.1.0/24 (and fd00:1::/64), node `n2` hosts
//! 10.244.2.0/24. External addresses come from 192.0.2.0/24.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::core::cluster::{NamedPort, PodPhase, Protocol};
use crate::core::policy::{Direction, Peer, Port, PortMatch, Rule as PolicyRule};
use crate::nft::model::{Action, KeyPart, Match, SetRef};

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: Labels::new(labels.iter().map(|(k, v)| (*k, *v))),
        node_name: Some(node.into()),
        host_network: false,
        named_ports: vec![],
        ips: ip.split(',').map(|s| s.parse().unwrap()).collect(),
        phase: PodPhase::Running,
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        name: name.into(),
        labels: Labels::new(
            labels
                .iter()
                .map(|(k, v)| (*k, *v))
                .chain([(NAMESPACE_NAME_LABEL, name)]),
        ),
    }
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::from_labels(pairs.iter().map(|(k, v)| (*k, *v)))
}

fn policy(ns: &str, name: &str, select: Selector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: select,
        ingress: None,
        egress: None,
    }
}

fn from_pods(ns: &str, s: Selector) -> Peer {
    Peer::Pods {
        namespaces: Namespaces::Named(ns.into()),
        pods: s,
    }
}

fn tcp(port: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port: PortMatch::Range(port, port),
    }
}

fn rule(peers: Option<Vec<Peer>>, ports: Option<Vec<Port>>) -> PolicyRule {
    PolicyRule { peers, ports }
}

fn compiler() -> Compiler {
    Compiler::new(Config::new("n1"))
}

/// Elements of a map, without the entries that let every isolated pod reach itself.
fn elements(c: &Compiler, set: &str) -> Vec<(Vec<KeyPart>, String)> {
    c.table().unwrap().sets[set]
        .elements
        .iter()
        .map(|(k, v)| (k.0.clone(), format!("{:?}", v.as_ref().unwrap())))
        .filter(|(_, v)| !v.contains("self_"))
        .collect()
}

fn ip(s: &str) -> KeyPart {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => KeyPart::V4(a),
        IpAddr::V6(a) => KeyPart::V6(a),
    }
}

#[test]
fn first_commit_creates_the_skeleton_and_nothing_else_without_policies() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    let tx = c.commit();
    assert!(tx.create_table);
    let t = c.table().unwrap();
    for base in ["forward_egress", "forward_ingress", "input_egress"] {
        assert!(t.chains[base].base.is_some(), "{base} is a base chain");
    }
    assert_eq!(
        t.element_count(),
        1,
        "no policy: nothing isolated, the pod's address is only known"
    );
    assert_eq!(t.sets["local_pods_v4"].elements.len(), 1);
    assert!(c.commit().is_empty(), "nothing changed: empty transaction");
}

#[test]
fn default_deny_isolates_only_selected_local_pods() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    c.upsert_pod(pod("prod", "db-1", "n1", "10.244.1.6", &[("app", "db")]));
    c.upsert_pod(pod("prod", "web-2", "n2", "10.244.2.5", &[("app", "web")]));
    let mut p = policy("prod", "deny", sel(&[("app", "web")]));
    p.ingress = Some(vec![]);
    c.upsert_policy(p);
    c.commit();
    let t = c.table().unwrap();
    assert_eq!(
        elements(&c, "ingress_pods_v4"),
        vec![(
            vec![ip("10.244.1.5")],
            "Goto(\"ingress_prod_web-1\")".to_string()
        )]
    );
    assert_eq!(
        t.sets["ingress_isolated_v4"]
            .elements
            .keys()
            .collect::<Vec<_>>(),
        vec![&Key::new(vec![ip("10.244.1.5")])]
    );
    let chain = &t.chains["ingress_prod_web-1"];
    assert_eq!(chain.rules.len(), 1, "only the counted drop");
    assert!(chain.rules[0].counter);
    assert_eq!(
        chain.rules[0].comment.as_deref(),
        Some("prod/web-1 ingress: isolated by prod/deny")
    );
    assert!(
        !t.chains.contains_key("egress_prod_web-1"),
        "egress stays open"
    );
}

#[test]
fn pod_peers_are_flattened_into_the_peer_port_map() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    c.upsert_pod(pod("prod", "fe-1", "n2", "10.244.2.7", &[("app", "fe")]));
    let mut p = policy("prod", "allow-fe", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "fe")]))]),
        Some(vec![tcp(80)]),
    )]);
    c.upsert_policy(p);
    c.commit();
    assert_eq!(
        elements(&c, "ingress_peer_port_v4"),
        vec![(
            vec![
                ip("10.244.1.5"),
                ip("10.244.2.7"),
                KeyPart::Proto(6),
                KeyPart::Port(80)
            ],
            "Goto(\"np_prod_allow-fe_ingress_0\")".to_string()
        )]
    );
    let t = c.table().unwrap();
    let rules = &t.chains["ingress_prod_web-1"].rules;
    assert_eq!(
        rules.len(),
        1,
        "the allow maps are looked up once, in the ingress chain: {rules:?}"
    );
    assert!(t.chains["ingress"].rules.iter().any(
        |r| matches!(&r.action, Action::VMap { map, .. } if &**map == "ingress_peer_port_v4")
    ));
    assert_eq!(
        t.chains["np_prod_allow-fe_ingress_0"].rules[0]
            .comment
            .as_deref(),
        Some("prod/allow-fe ingress rule 0")
    );
}

#[test]
fn chain_length_does_not_grow_with_the_number_of_policies() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    for i in 0..200 {
        c.upsert_pod(pod(
            "prod",
            &format!("c{i}"),
            "n2",
            &format!("10.244.2.{}", i + 1),
            &[("client", &i.to_string())],
        ));
        let mut p = policy("prod", &format!("allow-{i}"), sel(&[("app", "web")]));
        p.ingress = Some(vec![rule(
            Some(vec![from_pods("prod", sel(&[("client", &i.to_string())]))]),
            Some(vec![tcp(8000 + i as u16)]),
        )]);
        c.upsert_policy(p);
    }
    c.commit();
    let t = c.table().unwrap();
    assert_eq!(t.chains["ingress_prod_web-1"].rules.len(), 1);
    assert_eq!(t.sets["ingress_peer_port_v4"].elements.len(), 200);
}

#[test]
fn adding_a_peer_pod_sends_only_its_elements() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    let mut p = policy("prod", "allow-fe", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "fe")]))]),
        Some(vec![tcp(80), tcp(443)]),
    )]);
    c.upsert_policy(p);
    c.commit();
    c.upsert_pod(pod("prod", "fe-1", "n2", "10.244.2.7", &[("app", "fe")]));
    let tx = c.commit();
    let stats = tx.stats();
    assert_eq!(stats.elements_added, 2, "{tx:?}");
    assert_eq!(stats.elements_deleted, 0);
    assert_eq!(stats.chains_flushed, 0, "no chain changes: {tx:?}");
    assert_eq!(stats.rules_added, 0, "{tx:?}");
    c.remove_pod(&ObjectKey::new("prod", "fe-1"));
    let tx = c.commit();
    assert_eq!(tx.stats().elements_deleted, 2);
    assert_eq!(tx.stats().elements_added, 0);
}

#[test]
fn ip_blocks_go_to_the_interval_map_without_overlaps() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    let mut p = policy("prod", "allow-net", sel(&[("app", "web")]));
    p.ingress = Some(vec![
        rule(
            Some(vec![Peer::IpBlock(IpBlock {
                cidr: "172.17.0.0/16".parse().unwrap(),
                except: vec!["172.17.1.0/24".parse().unwrap()],
            })]),
            None,
        ),
        rule(
            Some(vec![Peer::IpBlock(IpBlock {
                cidr: "172.17.0.0/24".parse().unwrap(),
                except: vec![],
            })]),
            None,
        ),
    ]);
    c.upsert_policy(p);
    c.commit();
    let e = elements(&c, "ingress_cidr_v4");
    // 172.17.0.0/24 is covered by both rules: the first one wins; the except stays out.
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        e[0].0[1],
        KeyPart::V4Range(
            "172.17.0.0".parse().unwrap(),
            "172.17.0.255".parse().unwrap()
        )
    );
    assert_eq!(
        e[1].0[1],
        KeyPart::V4Range(
            "172.17.2.0".parse().unwrap(),
            "172.17.255.255".parse().unwrap()
        )
    );
    assert!(e.iter().all(|(_, v)| v.contains("ingress_0")));
}

#[test]
fn ingress_named_ports_resolve_against_the_selected_pod() {
    let mut c = compiler();
    let mut web = pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]);
    web.named_ports = vec![NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    }];
    c.upsert_pod(web);
    c.upsert_pod(pod("prod", "plain", "n1", "10.244.1.6", &[("app", "web")]));
    let mut p = policy("prod", "allow-http", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        None,
        Some(vec![Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("http".into()),
        }]),
    )]);
    c.upsert_policy(p);
    c.commit();
    let e = elements(&c, "ingress_cidr_port_v4");
    assert_eq!(e.len(), 1, "only web-1 has the port: {e:?}");
    assert_eq!(e[0].0[0], ip("10.244.1.5"));
    assert_eq!(e[0].0[3], KeyPart::Port(8080));
    // The pod without the port is still isolated.
    assert!(c.table().unwrap().chains.contains_key("ingress_prod_plain"));
}

#[test]
fn egress_named_ports_resolve_against_each_destination() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "app-1", "n1", "10.244.1.5", &[("app", "app")]));
    let mut db = pod("prod", "db-1", "n2", "10.244.2.9", &[("app", "db")]);
    db.named_ports = vec![NamedPort {
        name: "pg".into(),
        protocol: Protocol::Tcp,
        port: 5432,
    }];
    c.upsert_pod(db);
    c.upsert_pod(pod("prod", "db-2", "n2", "10.244.2.10", &[("app", "db")]));
    let mut p = policy("prod", "to-db", sel(&[("app", "app")]));
    p.egress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "db")]))]),
        Some(vec![Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("pg".into()),
        }]),
    )]);
    c.upsert_policy(p);
    c.commit();
    assert_eq!(
        elements(&c, "egress_peer_port_v4"),
        vec![(
            vec![
                ip("10.244.1.5"),
                ip("10.244.2.9"),
                KeyPart::Proto(6),
                KeyPart::Port(5432)
            ],
            "Goto(\"np_prod_to-db_egress_0\")".to_string()
        )]
    );
    assert_eq!(
        c.table().unwrap().chains["np_prod_to-db_egress_0"].rules[0].action,
        Action::Verdict(Verdict::Accept),
        "an egress accept ends only the egress base chain; ingress is still checked"
    );
}

#[test]
fn namespace_label_changes_move_pods_in_and_out_of_groups() {
    let mut c = compiler();
    c.upsert_namespace(namespace("prod", &[]));
    c.upsert_namespace(namespace("mon", &[]));
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    c.upsert_pod(pod("mon", "prom", "n2", "10.244.2.3", &[]));
    let mut p = policy("prod", "allow-mon", sel(&[]));
    p.ingress = Some(vec![rule(
        Some(vec![Peer::Pods {
            namespaces: Namespaces::Matching(sel(&[("team", "mon")])),
            pods: Selector::everything(),
        }]),
        None,
    )]);
    c.upsert_policy(p);
    c.commit();
    assert!(elements(&c, "ingress_peer_v4").is_empty());
    c.upsert_namespace(namespace("mon", &[("team", "mon")]));
    let tx = c.commit();
    assert_eq!(tx.stats().elements_added, 1);
    assert_eq!(elements(&c, "ingress_peer_v4")[0].0[1], ip("10.244.2.3"));
    c.upsert_namespace(namespace("mon", &[]));
    c.commit();
    assert!(elements(&c, "ingress_peer_v4").is_empty());
}

#[test]
fn big_groups_become_one_shared_set_and_switch_back_when_small() {
    let mut c = Compiler::new(Config {
        inline_peer_limit: 3,
        ..Config::new("n1")
    });
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    c.upsert_pod(pod("prod", "web-2", "n1", "10.244.1.6", &[("app", "web")]));
    let mut p = policy("prod", "allow-clients", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("role", "client")]))]),
        Some(vec![tcp(80)]),
    )]);
    c.upsert_policy(p);
    for i in 1..=4 {
        c.upsert_pod(pod(
            "prod",
            &format!("c{i}"),
            "n2",
            &format!("10.244.2.{i}"),
            &[("role", "client")],
        ));
    }
    c.commit();
    let t = c.table().unwrap();
    let shared: Vec<&Set> = t
        .sets
        .values()
        .filter(|s| s.name.starts_with("peers_"))
        .collect();
    assert_eq!(shared.len(), 1, "one set shared by both web pods");
    assert_eq!(shared[0].elements.len(), 4);
    assert!(
        shared[0]
            .comment
            .as_deref()
            .unwrap()
            .contains("role=client")
    );
    for chain in ["ingress_prod_web-1", "ingress_prod_web-2"] {
        let rules = &t.chains[chain].rules;
        assert!(rules.iter().any(|r| r.matches.iter().any(
            |m| matches!(m, Match::Lookup { set: SetRef::Named(n), .. } if *n == shared[0].name)
        )));
    }
    assert!(t.sets["ingress_peer_port_v4"].elements.is_empty());
    // A fifth client only adds one element to the shared set.
    c.upsert_pod(pod("prod", "c5", "n2", "10.244.2.5", &[("role", "client")]));
    let tx = c.commit();
    assert_eq!(tx.stats().elements_added, 1, "{tx:?}");
    assert_eq!(tx.stats().rules_added, 0);
    // Shrinking below the limit flattens again and drops the set.
    for i in 1..=3 {
        c.remove_pod(&ObjectKey::new("prod", format!("c{i}")));
    }
    let tx = c.commit();
    assert_eq!(tx.delete_sets.len(), 1);
    assert_eq!(
        c.table().unwrap().sets["ingress_peer_port_v4"]
            .elements
            .len(),
        4
    );
}

#[test]
fn an_ip_that_moves_between_pods_in_one_commit_keeps_one_element() {
    let mut c = compiler();
    let mut p = policy("prod", "deny", Selector::everything());
    p.ingress = Some(vec![]);
    c.upsert_policy(p);
    c.upsert_pod(pod("prod", "old", "n1", "10.244.1.5", &[]));
    c.commit();
    let mut old = pod("prod", "old", "n1", "10.244.1.5", &[]);
    old.phase = PodPhase::Succeeded;
    c.upsert_pod(old);
    c.upsert_pod(pod("prod", "new", "n1", "10.244.1.5", &[]));
    let tx = c.commit();
    assert_eq!(
        elements(&c, "ingress_pods_v4"),
        vec![(
            vec![ip("10.244.1.5")],
            "Goto(\"ingress_prod_new\")".to_string()
        )]
    );
    // The dispatch entry moves; the pod's own entry, its known address and its isolated
    // address move to identical values.
    assert_eq!(tx.stats().elements_added, 4);
    assert_eq!(tx.stats().elements_deleted, 4);
}

#[test]
fn hostnetwork_terminal_and_ipless_pods_are_neither_isolated_nor_peers() {
    let mut c = compiler();
    let mut host = pod("prod", "host", "n1", "10.0.0.1", &[("app", "web")]);
    host.host_network = true;
    let mut done = pod("prod", "done", "n1", "10.244.1.9", &[("app", "web")]);
    done.phase = PodPhase::Failed;
    let mut pending = pod("prod", "pending", "n1", "10.244.1.10", &[("app", "web")]);
    pending.ips.clear();
    for p in [host, done, pending] {
        c.upsert_pod(p);
    }
    let mut p = policy("prod", "web-only", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "web")]))]),
        None,
    )]);
    c.upsert_policy(p);
    c.commit();
    assert_eq!(c.table().unwrap().element_count(), 0);
}

#[test]
fn unknown_addresses_of_the_node_pod_range_are_guarded() {
    let mut c = compiler();
    c.upsert_node(Node {
        name: "n1".into(),
        labels: Labels::empty(),
        addresses: vec![],
        pod_cidrs: vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ],
    });
    c.upsert_node(Node {
        name: "n2".into(),
        labels: Labels::empty(),
        addresses: vec![],
        pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
    });
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[]));
    c.upsert_pod(pod("prod", "remote", "n2", "10.244.2.5", &[]));
    c.commit();
    let t = c.table().unwrap();
    assert_eq!(
        t.sets["local_pod_cidrs_v4"]
            .elements
            .keys()
            .collect::<Vec<_>>(),
        vec![&Key::new(vec![KeyPart::V4Range(
            "10.244.1.0".parse().unwrap(),
            "10.244.1.255".parse().unwrap()
        )])],
        "only this node's range"
    );
    assert_eq!(t.sets["local_pod_cidrs_v6"].elements.len(), 1);
    assert_eq!(
        t.sets["local_pods_v4"].elements.keys().collect::<Vec<_>>(),
        vec![&Key::new(vec![ip("10.244.1.5")])],
        "only local pods are known here"
    );
    // A new pod becomes known in the same commit that isolates it.
    let mut p = policy("prod", "deny", Selector::everything());
    p.ingress = Some(vec![]);
    c.upsert_policy(p);
    c.upsert_pod(pod("prod", "web-2", "n1", "10.244.1.6", &[]));
    let tx = c.commit();
    let added: Vec<&str> = tx.add_elements.keys().map(|k| &**k).collect();
    assert!(
        added.contains(&"local_pods_v4") && added.contains(&"ingress_pods_v4"),
        "{added:?}"
    );
    // The node losing its range empties the set.
    c.upsert_node(Node {
        name: "n1".into(),
        labels: Labels::empty(),
        addresses: vec![],
        pod_cidrs: vec![],
    });
    let tx = c.commit();
    assert_eq!(tx.stats().elements_deleted, 2);
}

#[test]
fn attachments_give_addresses_before_the_api_does_and_add_anti_spoofing() {
    let mut c = compiler();
    let mut p = policy("prod", "deny", Selector::everything());
    p.ingress = Some(vec![]);
    c.upsert_policy(p);
    // The kubelet reports podIPs only after CNI ADD returns.
    let mut fresh = pod("prod", "web-1", "n1", "10.244.1.5", &[]);
    fresh.ips.clear();
    c.upsert_pod(fresh.clone());
    c.commit();
    assert!(elements(&c, "ingress_pods_v4").is_empty());
    let key = ObjectKey::new("prod", "web-1");
    c.upsert_attachment(
        key.clone(),
        LocalAttachment {
            host_interface: Some("veth1234".into()),
            ips: vec!["10.244.1.5".parse().unwrap()],
        },
    );
    c.commit();
    assert_eq!(
        elements(&c, "ingress_pods_v4").len(),
        1,
        "isolated from the attachment"
    );
    let t = c.table().unwrap();
    let chain = &t.chains["antispoof_veth1234"];
    assert_eq!(
        chain.base.as_ref().unwrap().hook,
        crate::nft::model::Hook::Ingress {
            device: "veth1234".into()
        }
    );
    assert_eq!(chain.rules.len(), 2);
    // The API catching up with the same address changes nothing.
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[]));
    assert!(c.commit().is_empty());
    // A DEL forgets the interface; the API still knows the pod.
    c.remove_attachment(&key);
    let tx = c.commit();
    assert_eq!(tx.delete_chains, vec![Name::from("antispoof_veth1234")]);
    assert_eq!(elements(&c, "ingress_pods_v4").len(), 1);
    // Without API addresses, removing the attachment unisolates nothing it cannot address.
    c.upsert_pod(fresh);
    c.commit();
    assert!(elements(&c, "ingress_pods_v4").is_empty());
}

#[test]
fn dual_stack_pods_get_entries_in_both_families() {
    let mut c = compiler();
    c.upsert_pod(pod(
        "prod",
        "web-1",
        "n1",
        "10.244.1.5,fd00:1::5",
        &[("app", "web")],
    ));
    c.upsert_pod(pod(
        "prod",
        "fe",
        "n2",
        "10.244.2.7,fd00:2::7",
        &[("app", "fe")],
    ));
    let mut p = policy("prod", "allow-fe", sel(&[("app", "web")]));
    p.ingress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "fe")]))]),
        None,
    )]);
    c.upsert_policy(p);
    c.commit();
    assert_eq!(elements(&c, "ingress_pods_v6").len(), 1);
    assert_eq!(
        elements(&c, "ingress_peer_v6")[0].0,
        vec![ip("fd00:1::5"), ip("fd00:2::7")]
    );
    assert_eq!(
        elements(&c, "ingress_peer_v4")[0].0,
        vec![ip("10.244.1.5"), ip("10.244.2.7")]
    );
}

/// Random sequences of changes, committed at random points, must end in the same table as a
/// compiler fed only the final state.
mod incremental_equals_full {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Change {
        Pod {
            idx: usize,
            node: bool,
            ip: u8,
            app: u8,
            role: u8,
            alive: bool,
        },
        Namespace {
            idx: usize,
            team: u8,
        },
        Policy {
            idx: usize,
            kind: u8,
            port: u16,
            present: bool,
        },
        Commit,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0..8usize, any::<bool>(), 1..12u8, 0..3u8, 0..3u8, prop::bool::weighted(0.8))
                .prop_map(|(idx, node, ip, app, role, alive)| Change::Pod { idx, node, ip, app, role, alive }),
            1 => (0..3usize, 0..3u8).prop_map(|(idx, team)| Change::Namespace { idx, team }),
            2 => (0..4usize, 0..9u8, 79..82u16, prop::bool::weighted(0.8))
                .prop_map(|(idx, kind, port, present)| Change::Policy { idx, kind, port, present }),
            1 => Just(Change::Commit),
        ]
    }

    const NS: [&str; 3] = ["a", "b", "c"];

    fn make_policy(idx: usize, kind: u8, port: u16) -> NetworkPolicy {
        let ns = NS[idx % 3];
        let mut p = policy(
            ns,
            &format!("p{idx}"),
            sel(&[("app", &(idx % 3).to_string())]),
        );
        let peer = match kind % 3 {
            0 => from_pods(ns, sel(&[("role", "1")])),
            1 => Peer::Pods {
                namespaces: Namespaces::Matching(sel(&[("team", "x")])),
                pods: Selector::everything(),
            },
            _ => Peer::IpBlock(IpBlock {
                cidr: "10.244.0.0/16".parse().unwrap(),
                except: vec!["10.244.1.0/28".parse().unwrap()],
            }),
        };
        let named = Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("http".into()),
        };
        let ports = match kind {
            0..=2 => Some(vec![tcp(port)]),
            3..=5 => None,
            6 | 7 => Some(vec![named, tcp(port)]),
            _ => Some(vec![Port {
                protocol: Protocol::Udp,
                port: PortMatch::Range(port, port + 5),
            }]),
        };
        let r = rule(Some(vec![peer]), ports);
        if kind.is_multiple_of(2) {
            p.ingress = Some(vec![r]);
        } else {
            p.egress = Some(vec![r.clone()]);
            p.ingress = Some(vec![r]);
        }
        p
    }

    fn apply(c: &mut Compiler, ch: &Change) {
        match ch {
            Change::Pod {
                idx,
                node,
                ip,
                app,
                role,
                alive,
            } => {
                let ns = NS[idx % 3];
                let name = format!("p{idx}");
                if *alive {
                    let node = if *node { "n1" } else { "n2" };
                    let mut p = pod(
                        ns,
                        &name,
                        node,
                        &format!("10.244.1.{ip}"),
                        &[("app", &app.to_string()), ("role", &role.to_string())],
                    );
                    if *role == 1 || *app == 2 {
                        p.named_ports.push(NamedPort {
                            name: "http".into(),
                            protocol: Protocol::Tcp,
                            port: 8000 + u16::from(*ip),
                        });
                    }
                    c.upsert_pod(p);
                } else {
                    c.remove_pod(&ObjectKey::new(ns, name));
                }
            }
            Change::Namespace { idx, team } => {
                let labels: &[(&str, &str)] = if *team == 0 { &[("team", "x")] } else { &[] };
                c.upsert_namespace(namespace(NS[*idx], labels));
            }
            Change::Policy {
                idx,
                kind,
                port,
                present,
            } => {
                if *present {
                    c.upsert_policy(make_policy(*idx, *kind, *port));
                } else {
                    c.remove_policy(&ObjectKey::new(NS[idx % 3], format!("p{idx}")));
                }
            }
            Change::Commit => {
                c.commit();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn incremental_commits_reach_the_same_table(changes in prop::collection::vec(change(), 1..40), limit in 1..4usize) {
            let cfg = Config { inline_peer_limit: limit, ..Config::new("n1") };
            let mut inc = Compiler::new(cfg.clone());
            for ch in &changes {
                apply(&mut inc, ch);
            }
            inc.commit();
            // The final state, fed to a fresh compiler in one go.
            let mut full = Compiler::new(cfg);
            for ch in changes.iter().filter(|c| !matches!(c, Change::Commit)) {
                apply(&mut full, ch);
            }
            full.commit();
            prop_assert_eq!(inc.table(), full.table());
            // Every shared set in use exists, and nothing else lingers.
            let t = inc.table().unwrap();
            let used: BTreeSet<&str> = t.chains.values().flat_map(|c| &c.rules).flat_map(|r| &r.matches)
                .filter_map(|m| match m { Match::Lookup { set: SetRef::Named(n), .. } => Some(&**n), _ => None })
                .collect();
            for s in t.sets.keys().filter(|s| s.starts_with("peers_")) {
                prop_assert!(used.contains(&**s), "unused shared set {}", s);
            }
        }
    }
}

#[test]
fn dirty_tracking_does_not_touch_unrelated_pods() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "web-1", "n1", "10.244.1.5", &[("app", "web")]));
    c.upsert_pod(pod("dev", "web-1", "n1", "10.244.1.6", &[("app", "web")]));
    for ns in ["prod", "dev"] {
        let mut p = policy(ns, "deny", Selector::everything());
        p.ingress = Some(vec![]);
        c.upsert_policy(p);
    }
    c.commit();
    let mut p = policy("prod", "deny", Selector::everything());
    p.egress = Some(vec![]);
    c.upsert_policy(p);
    assert_eq!(c.dirty_pods.len(), 1, "only the prod pod is recomputed");
    let tx = c.commit();
    assert_eq!(tx.add_chains.len(), 1, "egress chain of prod/web-1: {tx:?}");
    let _ = Direction::Egress;
}

#[test]
fn a_destination_changing_its_named_port_number_updates_egress_elements() {
    let mut c = compiler();
    c.upsert_pod(pod("prod", "app-1", "n1", "10.244.1.5", &[("app", "app")]));
    let mut db = pod("prod", "db-1", "n2", "10.244.2.9", &[("app", "db")]);
    db.named_ports = vec![NamedPort {
        name: "pg".into(),
        protocol: Protocol::Tcp,
        port: 5432,
    }];
    c.upsert_pod(db.clone());
    let mut p = policy("prod", "to-db", sel(&[("app", "app")]));
    p.egress = Some(vec![rule(
        Some(vec![from_pods("prod", sel(&[("app", "db")]))]),
        Some(vec![Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("pg".into()),
        }]),
    )]);
    c.upsert_policy(p);
    c.commit();
    db.named_ports[0].port = 6432;
    c.upsert_pod(db);
    let tx = c.commit();
    assert_eq!(
        (tx.stats().elements_deleted, tx.stats().elements_added),
        (1, 1)
    );
    assert_eq!(
        elements(&c, "egress_peer_port_v4")[0].0[3],
        KeyPart::Port(6432)
    );
}
