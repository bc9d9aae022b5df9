//! Loading real-looking manifests: the Kubernetes documentation's NetworkPolicy examples as
//! multi-document YAML, `kubectl get -o json` List dumps, API-style `PodList`s, directory
//! trees, and files full of kinds nftpol does not read.
//!
//! Fixtures live in tests/fixtures/input/; paths are relative to the package root (where
//! cargo runs integration tests), as a user would type them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use nftpol::core::cluster::{Labels, NamedPort, PodPhase, Protocol};
use nftpol::core::policy::{IpBlock, Namespaces, NetworkPolicy, Peer, Port, PortMatch, Rule};
use nftpol::core::selector::Selector;
use nftpol::input::{Loaded, load};

const FIXTURES: &str = "tests/fixtures/input";

fn load_ok(paths: &[&str]) -> Loaded {
    let paths: Vec<PathBuf> = paths
        .iter()
        .map(|p| PathBuf::from(FIXTURES).join(p))
        .collect();
    match load(&paths) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{paths:?} should load:\n{e}"),
    }
}

fn policy<'a>(loaded: &'a Loaded, name: &str) -> &'a NetworkPolicy {
    loaded
        .policies
        .iter()
        .find(|p| p.name.as_ref() == name)
        .unwrap_or_else(|| panic!("policy {name} loaded"))
}

fn names(policies: &[NetworkPolicy]) -> Vec<String> {
    policies.iter().map(|p| p.key().to_string()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn tcp(lo: u16, hi: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port: PortMatch::Range(lo, hi),
    }
}

#[test]
fn documentation_examples_load_from_one_multi_document_file() {
    let loaded = load_ok(&["docs/network-policies.yaml"]);
    assert_eq!(
        names(&loaded.policies),
        [
            "default/test-network-policy",
            "default/default-deny-ingress",
            "default/allow-all-ingress",
            "default/default-deny-egress",
            "default/allow-all-egress",
            "default/default-deny-all",
            "default/multi-port-egress",
            "default/alice-clients",
        ]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.pods.is_empty() && loaded.namespaces.is_empty() && loaded.nodes.is_empty());

    let role_db = Selector::from_labels([("role", "db")]);
    let test = policy(&loaded, "test-network-policy");
    assert_eq!(test.pod_selector, role_db);
    assert_eq!(
        test.ingress,
        Some(vec![Rule {
            peers: Some(vec![
                Peer::IpBlock(IpBlock {
                    cidr: "172.17.0.0/16".parse().unwrap(),
                    except: vec!["172.17.1.0/24".parse().unwrap()],
                }),
                Peer::Pods {
                    namespaces: Namespaces::Matching(Selector::from_labels([(
                        "project",
                        "myproject"
                    )])),
                    pods: Selector::everything(),
                },
                Peer::Pods {
                    namespaces: Namespaces::Named("default".into()),
                    pods: Selector::from_labels([("role", "frontend")]),
                },
            ]),
            ports: Some(vec![tcp(6379, 6379)]),
        }])
    );
    assert_eq!(
        test.egress,
        Some(vec![Rule {
            peers: Some(vec![Peer::IpBlock(IpBlock {
                cidr: "10.0.0.0/24".parse().unwrap(),
                except: vec![],
            })]),
            ports: Some(vec![tcp(5978, 5978)]),
        }])
    );

    let all = Rule {
        peers: None,
        ports: None,
    };
    let isolation = |name: &str| {
        let p = policy(&loaded, name);
        assert_eq!(p.pod_selector, Selector::everything(), "{name}");
        (p.ingress.clone(), p.egress.clone())
    };
    assert_eq!(isolation("default-deny-ingress"), (Some(vec![]), None));
    assert_eq!(
        isolation("allow-all-ingress"),
        (Some(vec![all.clone()]), None)
    );
    assert_eq!(isolation("default-deny-egress"), (None, Some(vec![])));
    assert_eq!(isolation("allow-all-egress"), (None, Some(vec![all])));
    assert_eq!(isolation("default-deny-all"), (Some(vec![]), Some(vec![])));

    let multi = policy(&loaded, "multi-port-egress");
    assert_eq!(multi.ingress, None);
    assert_eq!(
        multi.egress.as_ref().unwrap()[0].ports,
        Some(vec![tcp(32000, 32768)])
    );

    let alice = policy(&loaded, "alice-clients");
    assert_eq!(
        alice.ingress.as_ref().unwrap()[0].peers,
        Some(vec![Peer::Pods {
            namespaces: Namespaces::Matching(Selector::from_labels([("user", "alice")])),
            pods: Selector::from_labels([("role", "client")]),
        }])
    );
}

#[test]
fn kubectl_json_list_loads_every_kind() {
    let loaded = load_ok(&["cluster/snapshot.json"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let [ns] = loaded.namespaces.as_slice() else {
        panic!("one namespace: {:?}", loaded.namespaces)
    };
    assert_eq!(ns.name.as_ref(), "prod");
    assert_eq!(
        ns.labels,
        Labels::new([
            ("kubernetes.io/metadata.name", "prod"),
            ("team", "payments")
        ])
    );

    let [node] = loaded.nodes.as_slice() else {
        panic!("one node: {:?}", loaded.nodes)
    };
    assert_eq!(node.name.as_ref(), "kind-worker");
    assert_eq!(
        node.addresses,
        [ip("172.18.0.3"), ip("fc00:f853:ccd:e793::3")]
    );

    let [pod] = loaded.pods.as_slice() else {
        panic!("one pod: {:?}", loaded.pods)
    };
    assert_eq!(pod.key().to_string(), "prod/web-6c8b9f7d4-q2x7z");
    assert_eq!(pod.node_name.as_deref(), Some("kind-worker"));
    assert_eq!(pod.phase, PodPhase::Running);
    assert_eq!(pod.ips, [ip("10.244.1.7"), ip("fd00:10:244:1::7")]);
    assert_eq!(
        pod.named_ports,
        [NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80
        }]
    );
    assert!(pod.is_policy_relevant());

    let [np] = loaded.policies.as_slice() else {
        panic!("one policy: {:?}", loaded.policies)
    };
    assert_eq!(np.key().to_string(), "prod/web-allow-http");
    assert_eq!(
        np.ingress.as_ref().unwrap()[0].ports,
        Some(vec![Port {
            protocol: Protocol::Tcp,
            port: PortMatch::Named("http".into())
        }])
    );
}

#[test]
fn api_style_pod_list_items_inherit_their_kind() {
    let loaded = load_ok(&["cluster/pods.yaml"]);
    let pods: Vec<(String, Vec<IpAddr>, PodPhase)> = loaded
        .pods
        .iter()
        .map(|p| (p.key().to_string(), p.ips.clone(), p.phase))
        .collect();
    assert_eq!(
        pods,
        [
            (
                "prod/db-0".to_string(),
                vec![ip("10.244.1.9")],
                PodPhase::Running
            ),
            ("prod/db-1".to_string(), vec![], PodPhase::Pending),
        ]
    );
    assert_eq!(
        loaded.pods[0].named_port("postgres", Protocol::Tcp),
        Some(5432)
    );
}

#[test]
fn other_kinds_are_skipped_with_a_warning_naming_file_and_object() {
    let loaded = load_ok(&["cluster/mixed.yaml"]);
    let file = format!("{FIXTURES}/cluster/mixed.yaml");
    let tail =
        "nftpol reads only v1 Namespace, Pod and Node, and networking.k8s.io/v1 NetworkPolicy";
    assert_eq!(
        loaded.warnings,
        [
            format!("{file}: document 1: skipping apps/v1 Deployment prod/web: {tail}"),
            format!("{file}: document 2: skipping v1 Service prod/web: {tail}"),
            // A known kind in another API version is skipped too.
            format!(
                "{file}: document 3: skipping extensions/v1beta1 NetworkPolicy prod/legacy: {tail}"
            ),
            format!("{file}: document 4: items[0]: skipping v1 ConfigMap prod/settings: {tail}"),
        ]
    );
    assert_eq!(names(&loaded.policies), ["prod/deny-all"]);
}

#[test]
fn directories_are_read_recursively_in_sorted_order() {
    let loaded = load_ok(&["tree"]);
    // 05-first.yaml, 20-policies/{a.yml,b.json}, 3-last.YAML; notes.txt and .hidden/ skipped.
    assert_eq!(
        names(&loaded.policies),
        ["prod/first", "prod/from-a", "prod/from-b", "prod/last"]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn several_paths_load_in_argument_order_and_deterministically() {
    let paths = ["tree/3-last.YAML", "docs", "cluster/snapshot.json", "tree"];
    let first = load_ok(&paths);
    let names = names(&first.policies);
    assert_eq!(names.first().map(String::as_str), Some("prod/last"));
    assert_eq!(
        names.len(),
        1 + 8 + 1 + 3,
        "3-last.YAML is read once: {names:?}"
    );
    assert_eq!(load_ok(&paths), first);
}

#[test]
fn identical_labels_share_memory_across_files() {
    let loaded = load_ok(&["cluster/pods.yaml", "cluster/snapshot.json"]);
    // "role: db" of db-0 and db-1 come from different list items.
    let value_ptr = |i: usize| loaded.pods[i].labels.get("role").map(str::as_ptr);
    assert_eq!(value_ptr(0), value_ptr(1));
    let namespaces: BTreeSet<*const u8> =
        loaded.pods.iter().map(|p| p.namespace.as_ptr()).collect();
    assert_eq!(namespaces.len(), 1, "one shared \"prod\"");
}

#[test]
fn empty_directories_and_symlink_loops_are_harmless() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let loaded = load(std::slice::from_ref(&empty)).unwrap();
    assert_eq!(
        loaded.warnings,
        [format!(
            "{}: no .yaml, .yml or .json files in this directory",
            empty.display()
        )]
    );

    let looped = tmp.path().join("looped");
    std::fs::create_dir(&looped).unwrap();
    std::fs::write(
        looped.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&looped, looped.join("again")).unwrap();
    let loaded = load(&[looped]).unwrap();
    assert_eq!(loaded.namespaces.len(), 1);
}
