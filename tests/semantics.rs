//! NetworkPolicy semantics, case by case, from the Kubernetes documentation.
//!
//! Every table below states a connection (source, destination, protocol and port) and what
//! Kubernetes says must happen to it, with a name that reads like a sentence. The expected
//! answers are written by hand from the concept page
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>) and the
//! NetworkPolicy API reference, never computed: `core::eval` is the code under test here, and
//! the oracle for everything else.
//!
//! # Address plan
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | node n1 / n2 | 192.168.1.1 / 192.168.1.2 | fd00:1::1 / fd00:1::2 |
//! | pods on n1 | 10.244.1.0/24 | fd00:10:244:1::/64 |
//! | pods on n2 | 10.244.2.0/24 | fd00:10:244:2::/64 |
//! | the docs' ipBlocks | 172.17.0.0/16, 10.0.0.0/24 | 2001:db8::/64 |
//! | outside | 203.0.113.0/24 | 2001:db8::/32 |

mod common;

use common::strategy::{self, Probe};
use common::*;
use nftpol::core::cluster::{PodPhase, Protocol};
use nftpol::core::eval::{Cluster, Reason, Side, verdict};
use nftpol::core::policy::{Direction, Peer, PortMatch, Rule};
use nftpol::nft::model::proto;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone, Copy)]
enum L4 {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
    /// ICMP echo for IPv4, ICMPv6 echo for IPv6.
    Icmp,
}
use L4::*;

const ALLOWED: bool = true;
const DENIED: bool = false;

/// (sentence, source, destination, protocol and port, expected).
type Case = (&'static str, &'static str, &'static str, L4, bool);

fn proto_port(l4: L4, v4: bool) -> (u8, Option<u16>) {
    match l4 {
        Tcp(p) => (proto::TCP, Some(p)),
        Udp(p) => (proto::UDP, Some(p)),
        Sctp(p) => (proto::SCTP, Some(p)),
        Icmp if v4 => (proto::ICMP, None),
        Icmp => (proto::ICMPV6, None),
    }
}

/// Evaluates every case and reports all failures at once, each with the evaluator's reason.
fn check(cluster: &Cluster, cases: &[Case]) {
    let mut failures = Vec::new();
    for &(name, src, dst, l4, expected) in cases {
        let (src, dst) = (ip(src), ip(dst));
        let (proto, port) = proto_port(l4, src.is_ipv4());
        let d = verdict(cluster, src, dst, proto, port);
        if d.allowed != expected {
            let want = if expected { "allowed" } else { "denied" };
            failures.push(format!(
                "- {name}\n    {src} -> {dst} {l4:?}: want {want}, got {d}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The concept page's example policy

const DB: &str = "10.244.1.10";
const FRONTEND: &str = "10.244.1.11";
const BACKEND: &str = "10.244.1.12";
const MYPROJECT_POD: &str = "10.244.2.10";
const OTHER_FRONTEND: &str = "10.244.2.11";
const N1: &str = "192.168.1.1";
const N2: &str = "192.168.1.2";

/// `test-network-policy` from the concept page, in namespace `default`.
fn docs_example() -> Cluster {
    cluster()
        .node(node("n1").ip(N1).ip("fd00:1::1"))
        .node(node("n2").ip(N2).ip("fd00:1::2"))
        .ns(ns("default"))
        .ns(ns("myproject").label("project", "myproject"))
        .ns(ns("other"))
        .pod(pod("default", "db").label("role", "db").ip(DB).node("n1"))
        .pod(
            pod("default", "frontend")
                .label("role", "frontend")
                .ip(FRONTEND)
                .node("n1"),
        )
        .pod(
            pod("default", "backend")
                .label("role", "backend")
                .ip(BACKEND)
                .node("n1"),
        )
        .pod(
            pod("myproject", "anything")
                .label("app", "x")
                .ip(MYPROJECT_POD)
                .node("n2"),
        )
        .pod(
            pod("other", "frontend")
                .label("role", "frontend")
                .ip(OTHER_FRONTEND)
                .node("n2"),
        )
        .policy(
            policy("default", "test-network-policy")
                .select(sel!("role" = "db"))
                .ingress_rule(
                    allow()
                        .from(ip_block("172.17.0.0/16").except("172.17.1.0/24"))
                        .from(namespaces(sel!("project" = "myproject")))
                        .from(pods(sel!("role" = "frontend")))
                        .port(tcp(6379)),
                )
                .egress_rule(allow().to(ip_block("10.0.0.0/24")).port(tcp(5978))),
        )
        .build()
}

#[rustfmt::skip]
const DOCS_EXAMPLE: &[Case] = &[
    ("any pod in default labelled role=frontend may connect to the db on TCP 6379", FRONTEND, DB, Tcp(6379), ALLOWED),
    ("the same frontend may not use another port", FRONTEND, DB, Tcp(6380), DENIED),
    ("the port is TCP 6379, so UDP 6379 is denied", FRONTEND, DB, Udp(6379), DENIED),
    ("a pod without role=frontend in default may not connect", BACKEND, DB, Tcp(6379), DENIED),
    ("any pod in a namespace labelled project=myproject may connect", MYPROJECT_POD, DB, Tcp(6379), ALLOWED),
    ("a role=frontend pod of another namespace is not selected by a bare podSelector", OTHER_FRONTEND, DB, Tcp(6379), DENIED),
    ("172.17.0.0, the first address of the block, may connect", "172.17.0.0", DB, Tcp(6379), ALLOWED),
    ("172.17.0.255, just below the except, may connect", "172.17.0.255", DB, Tcp(6379), ALLOWED),
    ("172.17.1.0, the first excepted address, may not", "172.17.1.0", DB, Tcp(6379), DENIED),
    ("172.17.1.255, the last excepted address, may not", "172.17.1.255", DB, Tcp(6379), DENIED),
    ("172.17.2.0, just above the except, may connect", "172.17.2.0", DB, Tcp(6379), ALLOWED),
    ("172.17.255.255, the last address of the block, may connect", "172.17.255.255", DB, Tcp(6379), ALLOWED),
    ("172.16.255.255, just below the block, may not", "172.16.255.255", DB, Tcp(6379), DENIED),
    ("172.18.0.0, just above the block, may not", "172.18.0.0", DB, Tcp(6379), DENIED),
    ("the db may connect to 10.0.0.0/24 on TCP 5978", DB, "10.0.0.1", Tcp(5978), ALLOWED),
    ("the db may connect to the last address of 10.0.0.0/24", DB, "10.0.0.255", Tcp(5978), ALLOWED),
    ("the db may not connect just outside 10.0.0.0/24", DB, "10.0.1.0", Tcp(5978), DENIED),
    ("the db may not connect to 10.0.0.0/24 on another port", DB, "10.0.0.1", Tcp(5979), DENIED),
    ("the db may not connect to 10.0.0.0/24 over UDP", DB, "10.0.0.1", Udp(5978), DENIED),
    ("the db is isolated for egress, so it may not reach the frontend", DB, FRONTEND, Tcp(80), DENIED),
    ("pods no policy selects keep accepting all traffic", BACKEND, FRONTEND, Tcp(80), ALLOWED),
    ("pods no policy selects keep sending all traffic", FRONTEND, "203.0.113.1", Udp(53), ALLOWED),
    ("a ports list never matches ICMP", FRONTEND, DB, Icmp, DENIED),
    ("the db's own node may always connect to it, on any port", N1, DB, Tcp(1234), ALLOWED),
    ("another node is just an address outside the ipBlock", N2, DB, Tcp(6379), DENIED),
];

#[test]
fn the_docs_example_policy_allows_exactly_what_the_docs_list() {
    check(&docs_example(), DOCS_EXAMPLE);
}

// ---------------------------------------------------------------------------------------------
// namespaceSelector AND podSelector in one peer, versus two peers

fn alice_bob(rule: RuleBuilder) -> Cluster {
    cluster()
        .ns(ns("default"))
        .ns(ns("alice").label("user", "alice"))
        .ns(ns("bob").label("user", "bob"))
        .pod(
            pod("default", "server")
                .label("app", "server")
                .ip("10.244.1.2"),
        )
        .pod(
            pod("alice", "client")
                .label("role", "client")
                .ip("10.244.1.3"),
        )
        .pod(
            pod("alice", "other")
                .label("role", "other")
                .ip("10.244.1.4"),
        )
        .pod(
            pod("bob", "client")
                .label("role", "client")
                .ip("10.244.1.5"),
        )
        .pod(
            pod("default", "client")
                .label("role", "client")
                .ip("10.244.1.6"),
        )
        .pod(
            pod("default", "other")
                .label("role", "other")
                .ip("10.244.1.7"),
        )
        .policy(
            policy("default", "server")
                .select(sel!("app" = "server"))
                .ingress_rule(rule),
        )
        .build()
}

const SERVER: &str = "10.244.1.2";
const ALICE_CLIENT: &str = "10.244.1.3";
const ALICE_OTHER: &str = "10.244.1.4";
const BOB_CLIENT: &str = "10.244.1.5";
const DEFAULT_CLIENT: &str = "10.244.1.6";
const DEFAULT_OTHER: &str = "10.244.1.7";

#[rustfmt::skip]
const ONE_PEER_BOTH_SELECTORS: &[Case] = &[
    ("a role=client pod in a user=alice namespace may connect", ALICE_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("another pod in the user=alice namespace may not", ALICE_OTHER, SERVER, Tcp(80), DENIED),
    ("a role=client pod in a user=bob namespace may not", BOB_CLIENT, SERVER, Tcp(80), DENIED),
    ("a role=client pod in the policy's own namespace may not", DEFAULT_CLIENT, SERVER, Tcp(80), DENIED),
];

#[test]
fn one_peer_with_namespace_and_pod_selectors_requires_both() {
    let c =
        alice_bob(allow().from(namespaces(sel!("user" = "alice")).pods(sel!("role" = "client"))));
    check(&c, ONE_PEER_BOTH_SELECTORS);
}

#[rustfmt::skip]
const TWO_PEERS: &[Case] = &[
    ("a role=client pod in the alice namespace may connect", ALICE_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("any pod in the alice namespace may connect", ALICE_OTHER, SERVER, Tcp(80), ALLOWED),
    ("a role=client pod in the local namespace may connect", DEFAULT_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("another pod of the local namespace may not", DEFAULT_OTHER, SERVER, Tcp(80), DENIED),
    ("a role=client pod of the bob namespace may not", BOB_CLIENT, SERVER, Tcp(80), DENIED),
];

#[test]
fn two_peers_are_ored_and_a_bare_pod_selector_means_the_local_namespace() {
    let c = alice_bob(
        allow()
            .from(namespaces(sel!("user" = "alice")))
            .from(pods(sel!("role" = "client"))),
    );
    check(&c, TWO_PEERS);
}

#[rustfmt::skip]
const NAMESPACE_BY_NAME: &[Case] = &[
    ("pods of bob may connect", BOB_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("pods of alice may not", ALICE_CLIENT, SERVER, Tcp(80), DENIED),
];

#[test]
fn a_namespace_can_be_targeted_by_its_name_label() {
    let c = alice_bob(allow().from(namespaces(sel!("kubernetes.io/metadata.name" = "bob"))));
    check(&c, NAMESPACE_BY_NAME);
}

#[rustfmt::skip]
const EMPTY_NAMESPACE_SELECTOR: &[Case] = &[
    ("role=client in alice may connect", ALICE_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("role=client in bob may connect", BOB_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("role=client in the local namespace may connect", DEFAULT_CLIENT, SERVER, Tcp(80), ALLOWED),
    ("role=other anywhere may not", ALICE_OTHER, SERVER, Tcp(80), DENIED),
    ("an external address is not a pod", "203.0.113.1", SERVER, Tcp(80), DENIED),
];

#[test]
fn an_empty_namespace_selector_selects_every_namespace() {
    let c = alice_bob(allow().from(namespaces(sel!()).pods(sel!("role" = "client"))));
    check(&c, EMPTY_NAMESPACE_SELECTOR);
}

// ---------------------------------------------------------------------------------------------
// Default policies

const A1: &str = "10.244.1.21";
const A2: &str = "10.244.1.22";
const B1: &str = "10.244.2.21";
const OUTSIDE: &str = "203.0.113.7";

/// Namespace `a` with pods a1 and a2 (a2 labelled app=web), namespace `b` with pod b1, and
/// the given policies in `a`.
fn two_namespaces(policies: Vec<PolicyBuilder>) -> Cluster {
    let mut c = cluster()
        .ns(ns("a"))
        .ns(ns("b"))
        .pod(pod("a", "a1").ip(A1))
        .pod(pod("a", "a2").label("app", "web").ip(A2))
        .pod(pod("b", "b1").ip(B1));
    for p in policies {
        c = c.policy(p);
    }
    c.build()
}

#[rustfmt::skip]
const DEFAULT_DENY_INGRESS: &[Case] = &[
    ("a pod of the same namespace may not connect in", A1, A2, Tcp(80), DENIED),
    ("a pod of another namespace may not connect in", B1, A1, Tcp(80), DENIED),
    ("the outside may not connect in", OUTSIDE, A1, Tcp(443), DENIED),
    ("ICMP is denied too", B1, A1, Icmp, DENIED),
    ("egress is not affected: a pod of a may reach b", A1, B1, Tcp(80), ALLOWED),
    ("egress is not affected: a pod of a may reach the outside", A1, OUTSIDE, Udp(53), ALLOWED),
    ("pods of other namespaces stay open", OUTSIDE, B1, Tcp(80), ALLOWED),
];

#[test]
fn default_deny_ingress_isolates_every_pod_of_the_namespace_for_ingress_only() {
    let c = two_namespaces(vec![policy("a", "default-deny-ingress").deny_ingress()]);
    check(&c, DEFAULT_DENY_INGRESS);
}

#[rustfmt::skip]
const ALLOW_ALL_INGRESS: &[Case] = &[
    ("the outside may connect in", OUTSIDE, A1, Tcp(443), ALLOWED),
    ("another namespace may connect in, any protocol", B1, A2, Sctp(9), ALLOWED),
    ("even ICMP is allowed by a rule without ports", B1, A2, Icmp, ALLOWED),
];

#[test]
fn allow_all_ingress_wins_over_any_other_ingress_policy() {
    let c = two_namespaces(vec![
        policy("a", "default-deny-ingress").deny_ingress(),
        policy("a", "allow-all-ingress").ingress_rule(allow()),
    ]);
    check(&c, ALLOW_ALL_INGRESS);
}

#[rustfmt::skip]
const DEFAULT_DENY_EGRESS: &[Case] = &[
    ("a pod may not connect to its own namespace", A1, A2, Tcp(80), DENIED),
    ("a pod may not connect to another namespace", A1, B1, Tcp(80), DENIED),
    ("a pod may not connect to the outside", A2, OUTSIDE, Udp(53), DENIED),
    ("a pod may not connect to its node either", A1, N1, Tcp(10250), DENIED),
    ("ingress is not affected: b may connect in", B1, A1, Tcp(80), ALLOWED),
    ("ingress is not affected: the outside may connect in", OUTSIDE, A2, Tcp(80), ALLOWED),
];

#[test]
fn default_deny_egress_isolates_every_pod_of_the_namespace_for_egress_only() {
    let c = two_namespaces(vec![policy("a", "default-deny-egress").deny_egress()]);
    check(&c, DEFAULT_DENY_EGRESS);
}

#[rustfmt::skip]
const ALLOW_ALL_EGRESS: &[Case] = &[
    ("a pod may connect to the outside", A1, OUTSIDE, Tcp(443), ALLOWED),
    ("a pod may ping another namespace", A1, B1, Icmp, ALLOWED),
];

#[test]
fn allow_all_egress_wins_over_any_other_egress_policy() {
    let c = two_namespaces(vec![
        policy("a", "default-deny-egress").deny_egress(),
        policy("a", "allow-all-egress").egress_rule(allow()),
    ]);
    check(&c, ALLOW_ALL_EGRESS);
}

#[rustfmt::skip]
const DEFAULT_DENY_ALL: &[Case] = &[
    ("no connection within the namespace", A1, A2, Tcp(80), DENIED),
    ("no connection out", A1, B1, Tcp(80), DENIED),
    ("no connection in", B1, A1, Tcp(80), DENIED),
    ("no connection from the outside", OUTSIDE, A2, Udp(53), DENIED),
    ("other namespaces are untouched", B1, OUTSIDE, Tcp(80), ALLOWED),
];

#[test]
fn default_deny_all_denies_both_directions() {
    let c = two_namespaces(vec![
        policy("a", "default-deny-all").deny_ingress().deny_egress(),
    ]);
    check(&c, DEFAULT_DENY_ALL);
}

#[rustfmt::skip]
const INGRESS_FROM_B: &[Case] = &[
    ("b may connect into a", B1, A1, Tcp(80), ALLOWED),
    ("a pod of a may not connect to another pod of a", A2, A1, Tcp(80), DENIED),
    ("a pod of b, which no policy selects, accepts everything", A1, B1, Tcp(80), ALLOWED),
];

#[rustfmt::skip]
const B_EGRESS_TOO: &[Case] = &[
    ("the source's egress must allow too", B1, A1, Tcp(80), DENIED),
    ("b may still reach the outside", B1, OUTSIDE, Tcp(80), ALLOWED),
];

#[test]
fn policies_act_only_in_their_namespace_and_both_ends_must_allow() {
    // A policy in `a` selecting every pod (of `a`) with ingress from everywhere in `b`...
    let c = two_namespaces(vec![policy("a", "from-b").ingress_rule(
        allow().from(namespaces(sel!("kubernetes.io/metadata.name" = "b"))),
    )]);
    check(&c, INGRESS_FROM_B);
    // ...and an egress policy in `b` that only allows the outside: now b -> a is denied at b.
    let mut c = c;
    c.policies.push(
        policy("b", "only-outside")
            .egress_rule(allow().to(ip_block("203.0.113.0/24")))
            .build(),
    );
    check(&c, B_EGRESS_TOO);
}

// ---------------------------------------------------------------------------------------------
// endPort and ports

#[rustfmt::skip]
const END_PORT: &[Case] = &[
    ("the first port of the range is allowed", DB, "10.0.0.7", Tcp(32000), ALLOWED),
    ("the last port of the range is allowed", DB, "10.0.0.7", Tcp(32768), ALLOWED),
    ("a port inside the range is allowed", DB, "10.0.0.7", Tcp(32100), ALLOWED),
    ("the port below the range is denied", DB, "10.0.0.7", Tcp(31999), DENIED),
    ("the port above the range is denied", DB, "10.0.0.7", Tcp(32769), DENIED),
    ("the range is TCP only", DB, "10.0.0.7", Udp(32000), DENIED),
    ("the range applies to 10.0.0.0/24 only", DB, "10.0.1.7", Tcp(32000), DENIED),
    ("the policy is Egress-only, so ingress stays open", OUTSIDE, DB, Tcp(22), ALLOWED),
];

#[test]
fn an_end_port_range_is_inclusive_at_both_ends() {
    let c = cluster()
        .ns(ns("default"))
        .pod(pod("default", "db").label("role", "db").ip(DB))
        .policy(
            policy("default", "multi-port-egress")
                .select(sel!("role" = "db"))
                .egress_rule(allow().to(ip_block("10.0.0.0/24")).port(port_range(
                    Protocol::Tcp,
                    32000,
                    32768,
                ))),
        )
        .build();
    check(&c, END_PORT);
}

#[rustfmt::skip]
const PEERS_AND_PORTS: &[Case] = &[
    ("a listed peer on a listed TCP port", A1, A2, Tcp(80), ALLOWED),
    ("a listed peer on the listed UDP port", A1, A2, Udp(53), ALLOWED),
    ("a listed peer on any SCTP port (protocol without port)", A1, A2, Sctp(1), ALLOWED),
    ("a listed peer on the last SCTP port", A1, A2, Sctp(65535), ALLOWED),
    ("a listed peer on an unlisted port", A1, A2, Tcp(53), DENIED),
    ("an unlisted peer on a listed port", B1, A2, Tcp(80), DENIED),
];

#[test]
fn a_rule_needs_both_its_peers_and_its_ports_and_ports_are_ored() {
    let c = two_namespaces(vec![
        policy("a", "web").select(sel!("app" = "web")).ingress_rule(
            allow()
                .from(pods(sel!()))
                .port(tcp(80))
                .port(udp(53))
                .port(all_ports(Protocol::Sctp)),
        ),
    ]);
    check(&c, PEERS_AND_PORTS);
}

#[rustfmt::skip]
const ICMP_ALL_TCP: &[Case] = &[
    ("every TCP port is allowed, the lowest", B1, A1, Tcp(1), ALLOWED),
    ("every TCP port is allowed, the highest", B1, A1, Tcp(65535), ALLOWED),
    ("UDP is not", B1, A1, Udp(53), DENIED),
    ("ICMP is not, even with every TCP port allowed", B1, A1, Icmp, DENIED),
];

#[rustfmt::skip]
const ICMP_WITHOUT_PORTS: &[Case] = &[
    ("a rule without ports allows ICMP from its peers", B1, A1, Icmp, ALLOWED),
    ("but not from others", A2, A1, Icmp, DENIED),
];

#[test]
fn icmp_is_allowed_only_by_rules_without_ports() {
    let only_tcp = two_namespaces(vec![
        policy("a", "all-tcp").ingress_rule(allow().port(all_ports(Protocol::Tcp))),
    ]);
    check(&only_tcp, ICMP_ALL_TCP);
    let any_port = two_namespaces(vec![
        policy("a", "from-b").ingress_rule(allow().from(ip_block("10.244.2.0/24"))),
    ]);
    check(&any_port, ICMP_WITHOUT_PORTS);
}

// ---------------------------------------------------------------------------------------------
// policyTypes defaulting, as validated shapes

#[rustfmt::skip]
const EGRESS_ONLY: &[Case] = &[
    ("the outside may connect in", OUTSIDE, A1, Tcp(80), ALLOWED),
    ("a pod may reach its namespace", A1, A2, Tcp(80), ALLOWED),
    ("a pod may not reach the outside", A1, OUTSIDE, Tcp(80), DENIED),
];

#[test]
fn an_egress_only_policy_leaves_ingress_open() {
    // policyTypes: [Egress] with an egress rule: ingress is None.
    let c = two_namespaces(vec![
        policy("a", "egress-only").egress_rule(allow().to(pods(sel!()))),
    ]);
    check(&c, EGRESS_ONLY);
}

#[rustfmt::skip]
const INGRESS_RULES_NO_TYPES: &[Case] = &[
    ("egress to the outside is open", A1, OUTSIDE, Tcp(80), ALLOWED),
    ("ingress from the outside is closed", OUTSIDE, A1, Tcp(80), DENIED),
];

#[rustfmt::skip]
const INGRESS_RULES_BOTH_TYPES: &[Case] = &[
    ("egress to the outside is denied", A1, OUTSIDE, Tcp(80), DENIED),
    ("egress within the namespace is denied too", A1, A2, Tcp(80), DENIED),
];

#[test]
fn a_policy_with_only_ingress_rules_leaves_egress_open_unless_egress_is_listed() {
    // No policyTypes, only ingress rules: defaults to [Ingress].
    let ingress_only = two_namespaces(vec![
        policy("a", "ingress").ingress_rule(allow().from(pods(sel!()))),
    ]);
    check(&ingress_only, INGRESS_RULES_NO_TYPES);
    // policyTypes: [Ingress, Egress] with only ingress rules: egress denies everything.
    let both = two_namespaces(vec![
        policy("a", "both")
            .ingress_rule(allow().from(pods(sel!())))
            .deny_egress(),
    ]);
    check(&both, INGRESS_RULES_BOTH_TYPES);
}

// ---------------------------------------------------------------------------------------------
// Named ports

const CLIENT: &str = "10.244.1.30";
const WEB_8080: &str = "10.244.1.31";
const WEB_9000: &str = "10.244.1.32";
const WEB_NONE: &str = "10.244.1.33";
const WEB_UDP: &str = "10.244.1.34";
const HOST_NET: &str = "192.168.1.1";

/// Four app=web pods: http on TCP 8080, http on TCP 9000, no http, http on UDP 8080; a client
/// that itself declares http on TCP 80; a hostNetwork pod declaring http on TCP 8080.
fn named_port_cluster(policies: Vec<PolicyBuilder>) -> Cluster {
    let mut c = cluster()
        .node(node("n1").ip(N1))
        .ns(ns("shop"))
        .pod(
            pod("shop", "client")
                .label("app", "client")
                .ip(CLIENT)
                .node("n1")
                .named_port("http", Protocol::Tcp, 80),
        )
        .pod(
            pod("shop", "web-8080")
                .label("app", "web")
                .ip(WEB_8080)
                .node("n1")
                .named_port("http", Protocol::Tcp, 8080),
        )
        .pod(
            pod("shop", "web-9000")
                .label("app", "web")
                .ip(WEB_9000)
                .node("n1")
                .named_port("http", Protocol::Tcp, 9000)
                .named_port("metrics", Protocol::Tcp, 9090),
        )
        .pod(
            pod("shop", "web-none")
                .label("app", "web")
                .ip(WEB_NONE)
                .node("n1")
                .named_port("metrics", Protocol::Tcp, 8080),
        )
        .pod(
            pod("shop", "web-udp")
                .label("app", "web")
                .ip(WEB_UDP)
                .node("n1")
                .named_port("http", Protocol::Udp, 8080),
        )
        .pod(
            pod("shop", "agent")
                .label("app", "web")
                .ip(HOST_NET)
                .node("n1")
                .host_network()
                .named_port("http", Protocol::Tcp, 8080),
        );
    for p in policies {
        c = c.policy(p);
    }
    c.build()
}

#[rustfmt::skip]
const NAMED_INGRESS: &[Case] = &[
    ("http is 8080 on web-8080", CLIENT, WEB_8080, Tcp(8080), ALLOWED),
    ("and nothing else there", CLIENT, WEB_8080, Tcp(9000), DENIED),
    ("http is 9000 on web-9000", CLIENT, WEB_9000, Tcp(9000), ALLOWED),
    ("so 8080 is closed on web-9000", CLIENT, WEB_9000, Tcp(8080), DENIED),
    ("a pod without a port named http allows nothing", CLIENT, WEB_NONE, Tcp(8080), DENIED),
    ("a port named http over UDP does not match a TCP named port", CLIENT, WEB_UDP, Tcp(8080), DENIED),
    ("nor does UDP traffic to it", CLIENT, WEB_UDP, Udp(8080), DENIED),
    ("the source's own named ports do not matter", WEB_8080, CLIENT, Tcp(80), ALLOWED),
    ("the name resolves on the destination, not the source's http=80", CLIENT, WEB_8080, Tcp(80), DENIED),
];

#[test]
fn an_ingress_named_port_resolves_on_each_selected_pod() {
    let c = named_port_cluster(vec![
        policy("shop", "web-http")
            .select(sel!("app" = "web"))
            .ingress_rule(allow().port(tcp_named("http"))),
    ]);
    check(&c, NAMED_INGRESS);
}

#[rustfmt::skip]
const NAMED_EGRESS: &[Case] = &[
    ("http is 8080 on web-8080", CLIENT, WEB_8080, Tcp(8080), ALLOWED),
    ("http is 9000 on web-9000", CLIENT, WEB_9000, Tcp(9000), ALLOWED),
    ("8080 is not http on web-9000", CLIENT, WEB_9000, Tcp(8080), DENIED),
    ("a destination without the name contributes nothing", CLIENT, WEB_NONE, Tcp(8080), DENIED),
    ("a destination declaring the name for UDP contributes nothing to TCP", CLIENT, WEB_UDP, Tcp(8080), DENIED),
    ("an external destination has no named ports", CLIENT, OUTSIDE, Tcp(8080), DENIED),
    ("a hostNetwork destination is the node, not a pod", CLIENT, HOST_NET, Tcp(8080), DENIED),
    ("the source's own http=80 does not open 80 anywhere", CLIENT, WEB_8080, Tcp(80), DENIED),
];

#[test]
fn an_egress_named_port_resolves_on_each_destination_pod() {
    let c = named_port_cluster(vec![
        policy("shop", "client-http")
            .select(sel!("app" = "client"))
            .egress_rule(allow().port(tcp_named("http"))),
    ]);
    check(&c, NAMED_EGRESS);
}

#[rustfmt::skip]
const NAMED_EGRESS_IP_BLOCK: &[Case] = &[
    ("a pod inside the block with http=8080", CLIENT, WEB_8080, Tcp(8080), ALLOWED),
    ("a pod in the except is not a peer, whatever its ports", CLIENT, WEB_9000, Tcp(9000), DENIED),
    ("a pod inside the block without the name", CLIENT, WEB_NONE, Tcp(8080), DENIED),
];

#[test]
fn an_egress_named_port_with_an_ip_block_still_resolves_on_the_destination_pod() {
    let c = named_port_cluster(vec![
        policy("shop", "client-http")
            .select(sel!("app" = "client"))
            .egress_rule(
                allow()
                    .to(ip_block("10.244.1.0/24").except("10.244.1.32/32"))
                    .port(tcp_named("http")),
            ),
    ]);
    check(&c, NAMED_EGRESS_IP_BLOCK);
}

// ---------------------------------------------------------------------------------------------
// Selectors

const PROD: &str = "10.244.1.41";
const DEV: &str = "10.244.1.42";
const BARE: &str = "10.244.1.43";

fn env_pods(selector: nftpol::core::selector::Selector) -> Cluster {
    cluster()
        .ns(ns("x"))
        .pod(pod("x", "prod").label("env", "prod").ip(PROD))
        .pod(pod("x", "dev").label("env", "dev").ip(DEV))
        .pod(pod("x", "bare").ip(BARE))
        .policy(policy("x", "deny").select(selector).deny_ingress())
        .build()
}

#[test]
fn match_expressions_select_pods_with_every_operator() {
    let from_outside = |c: &Cluster, prod: bool, dev: bool, bare: bool| {
        let cases: Vec<Case> = vec![
            ("the env=prod pod", OUTSIDE, PROD, Tcp(80), !prod),
            ("the env=dev pod", OUTSIDE, DEV, Tcp(80), !dev),
            ("the unlabelled pod", OUTSIDE, BARE, Tcp(80), !bare),
        ];
        check(c, &cases);
    };
    // (selected pods are isolated, so the outside is denied exactly there)
    from_outside(
        &env_pods(sel!("env" in ["prod", "staging"])),
        true,
        false,
        false,
    );
    from_outside(&env_pods(sel!("env" notin ["prod"])), false, true, true);
    from_outside(&env_pods(sel!(exists "env")), true, true, false);
    from_outside(&env_pods(sel!(!"env")), false, false, true);
    from_outside(
        &env_pods(sel!("env" = "dev", exists "env")),
        false,
        true,
        false,
    );
    from_outside(&env_pods(sel!()), true, true, true);
    from_outside(
        &env_pods(sel!("env" in ["prod"], !"env")),
        false,
        false,
        false,
    );
}

#[rustfmt::skip]
const PEER_OPERATORS: &[Case] = &[
    ("a pod without env matches DoesNotExist", BARE, PROD, Tcp(80), ALLOWED),
    ("a pod with env does not", DEV, PROD, Tcp(80), DENIED),
    ("NotIn matches env=dev on its port", DEV, PROD, Udp(53), ALLOWED),
    ("NotIn also matches a pod without the key", BARE, PROD, Udp(53), ALLOWED),
];

#[test]
fn peer_selectors_use_the_same_operators() {
    let mut c = env_pods(sel!("env" = "prod"));
    c.policies.push(
        policy("x", "from-unlabelled")
            .select(sel!("env" = "prod"))
            .ingress_rule(allow().from(pods(sel!(!"env"))))
            .build(),
    );
    c.policies.push(
        policy("x", "from-not-prod")
            .select(sel!("env" = "prod"))
            .ingress_rule(allow().from(pods(sel!("env" notin ["prod"]))).port(udp(53)))
            .build(),
    );
    check(&c, PEER_OPERATORS);
}

// ---------------------------------------------------------------------------------------------
// Which pods count: hostNetwork, terminal, IP-less

const HN: &str = "192.168.1.1";
const ON_N1: &str = "10.244.1.50";
const ON_N2: &str = "10.244.2.50";
const ON_N2_B: &str = "10.244.2.51";

fn host_network_cluster(policies: Vec<PolicyBuilder>) -> Cluster {
    let mut c = cluster()
        .node(node("n1").ip(N1))
        .node(node("n2").ip(N2))
        .ns(ns("sys"))
        .pod(
            pod("sys", "agent")
                .label("app", "agent")
                .ip(HN)
                .node("n1")
                .host_network(),
        )
        .pod(
            pod("sys", "on-n1")
                .label("app", "target")
                .ip(ON_N1)
                .node("n1"),
        )
        .pod(
            pod("sys", "on-n2")
                .label("app", "target")
                .ip(ON_N2)
                .node("n2"),
        )
        .pod(
            pod("sys", "on-n2-b")
                .label("app", "other")
                .ip(ON_N2_B)
                .node("n2"),
        );
    for p in policies {
        c = c.policy(p);
    }
    c.build()
}

#[rustfmt::skip]
const HOST_NETWORK_SELECTORS: &[Case] = &[
    ("a hostNetwork pod selected by a deny-all policy still sends", HN, ON_N2_B, Tcp(80), ALLOWED),
    ("a hostNetwork pod selected by a deny-all policy still receives", ON_N1, HN, Tcp(22), ALLOWED),
    ("a podSelector does not match a hostNetwork pod as a source", HN, ON_N2, Tcp(80), DENIED),
    ("a podSelector does not match a hostNetwork pod as a destination", ON_N2_B, HN, Tcp(80), DENIED),
    ("its node's own pods always accept it (it is the node)", HN, ON_N1, Tcp(80), ALLOWED),
];

#[test]
fn host_network_pods_are_never_isolated_and_never_pod_peers() {
    let c = host_network_cluster(vec![
        policy("sys", "deny-agent")
            .select(sel!("app" = "agent"))
            .deny_ingress()
            .deny_egress(),
        policy("sys", "targets-from-agent")
            .select(sel!("app" = "target"))
            .ingress_rule(allow().from(pods(sel!("app" = "agent")))),
        policy("sys", "other-egress")
            .select(sel!("app" = "other"))
            .egress_rule(allow().to(pods(sel!("app" = "agent")))),
    ]);
    check(&c, HOST_NETWORK_SELECTORS);
}

#[rustfmt::skip]
const HOST_NETWORK_IP_BLOCKS: &[Case] = &[
    ("an ipBlock with the node address admits the hostNetwork pod", HN, ON_N2, Tcp(80), ALLOWED),
    ("an ipBlock of node addresses lets a pod reach the hostNetwork pod", ON_N2_B, HN, Tcp(80), ALLOWED),
    ("the other node is not in the target's block", N2, ON_N1, Tcp(80), DENIED),
    ("but a node always reaches its own pods", N2, ON_N2, Tcp(80), ALLOWED),
];

#[test]
fn host_network_pods_are_matched_by_ip_blocks_on_their_node_address() {
    let c = host_network_cluster(vec![
        policy("sys", "targets-from-n1")
            .select(sel!("app" = "target"))
            .ingress_rule(allow().from(ip_block("192.168.1.1/32"))),
        policy("sys", "other-to-nodes")
            .select(sel!("app" = "other"))
            .egress_rule(allow().to(ip_block("192.168.1.0/24"))),
    ]);
    check(&c, HOST_NETWORK_IP_BLOCKS);
}

#[rustfmt::skip]
const LOCAL_NODE: &[Case] = &[
    ("kubelet probes from the pod's node are allowed", N1, ON_N1, Tcp(8080), ALLOWED),
    ("so is the node's IPv6 address to the pod's IPv6 address", "fd00:1::1", "fd00:10:244:1::50", Tcp(8080), ALLOWED),
    ("and ICMP from the node", N1, ON_N1, Icmp, ALLOWED),
    ("another node is not the pod's node", N2, ON_N1, Tcp(8080), DENIED),
    ("egress from the pod to its own node is still restricted", ON_N1, N1, Tcp(53), DENIED),
];

#[test]
fn a_node_always_reaches_its_own_pods_but_egress_to_it_is_restricted() {
    let c = cluster()
        .node(node("n1").ip(N1).ip("fd00:1::1"))
        .node(node("n2").ip(N2).ip("fd00:1::2"))
        .ns(ns("x"))
        .pod(
            pod("x", "locked")
                .ip(ON_N1)
                .ip("fd00:10:244:1::50")
                .node("n1"),
        )
        .policy(policy("x", "deny-all").deny_ingress().deny_egress())
        .build();
    check(&c, LOCAL_NODE);
}

#[rustfmt::skip]
const TERMINAL_PODS: &[Case] = &[
    ("a Succeeded pod's address is not a client", "10.244.1.61", "10.244.1.60", Tcp(80), DENIED),
    ("a Failed pod's address is not a client", "10.244.1.62", "10.244.1.60", Tcp(80), DENIED),
    ("a Pending pod with an IP is a client", "10.244.1.63", "10.244.1.60", Tcp(80), ALLOWED),
    ("a Succeeded pod is not isolated: its address receives anything", "203.0.113.1", "10.244.1.61", Tcp(80), ALLOWED),
    ("a Pending pod with an IP is isolated", "203.0.113.1", "10.244.1.63", Tcp(80), DENIED),
];

#[test]
fn terminal_and_ip_less_pods_are_neither_selected_nor_peers() {
    let c = cluster()
        .ns(ns("x"))
        .pod(pod("x", "server").label("app", "server").ip("10.244.1.60"))
        .pod(
            pod("x", "done")
                .label("app", "client")
                .ip("10.244.1.61")
                .phase(PodPhase::Succeeded),
        )
        .pod(
            pod("x", "crashed")
                .label("app", "client")
                .ip("10.244.1.62")
                .phase(PodPhase::Failed),
        )
        .pod(
            pod("x", "starting")
                .label("app", "client")
                .ip("10.244.1.63")
                .phase(PodPhase::Pending),
        )
        .pod(
            pod("x", "unscheduled")
                .label("app", "client")
                .phase(PodPhase::Pending),
        )
        .policy(
            policy("x", "server")
                .select(sel!("app" = "server"))
                .ingress_rule(allow().from(pods(sel!("app" = "client")))),
        )
        .policy(
            policy("x", "clients-deny")
                .select(sel!("app" = "client"))
                .deny_ingress(),
        )
        .build();
    check(&c, TERMINAL_PODS);
}

#[test]
fn a_reused_address_belongs_to_the_running_pod_not_the_terminal_one() {
    let base = || {
        cluster()
            .ns(ns("x"))
            .pod(pod("x", "server").label("app", "server").ip("10.244.1.70"))
            .policy(
                policy("x", "server")
                    .select(sel!("app" = "server"))
                    .ingress_rule(allow().from(pods(sel!("app" = "client")))),
            )
    };
    let old_client = base()
        .pod(
            pod("x", "old")
                .label("app", "client")
                .ip("10.244.1.71")
                .phase(PodPhase::Succeeded),
        )
        .pod(pod("x", "new").label("app", "other").ip("10.244.1.71"))
        .build();
    let new_client = base()
        .pod(
            pod("x", "old")
                .label("app", "other")
                .ip("10.244.1.71")
                .phase(PodPhase::Failed),
        )
        .pod(pod("x", "new").label("app", "client").ip("10.244.1.71"))
        .build();
    check(
        &old_client,
        &[(
            "the address now belongs to a non-client",
            "10.244.1.71",
            "10.244.1.70",
            Tcp(80),
            DENIED,
        )],
    );
    check(
        &new_client,
        &[(
            "the address now belongs to a client",
            "10.244.1.71",
            "10.244.1.70",
            Tcp(80),
            ALLOWED,
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Dual stack

const WEB4: &str = "10.244.1.80";
const WEB6: &str = "fd00:10:244:1::80";
const CLI4: &str = "10.244.1.81";
const CLI6: &str = "fd00:10:244:1::81";

#[rustfmt::skip]
const DUAL_STACK: &[Case] = &[
    ("the client reaches the web pod over IPv4", CLI4, WEB4, Tcp(80), ALLOWED),
    ("the client reaches the web pod over IPv6", CLI6, WEB6, Tcp(80), ALLOWED),
    ("an IPv4 block admits IPv4 sources", "203.0.113.200", WEB4, Tcp(80), ALLOWED),
    ("an IPv6 block admits IPv6 sources", "2001:db8::1:0", WEB6, Tcp(80), ALLOWED),
    ("the IPv6 except holds at its first address", "2001:db8::", WEB6, Tcp(80), DENIED),
    ("the IPv6 except holds at its last address", "2001:db8::ff", WEB6, Tcp(80), DENIED),
    ("just past the IPv6 except is allowed", "2001:db8::100", WEB6, Tcp(80), ALLOWED),
    ("an IPv6 source outside the /64 is denied", "2001:db8:0:1::1", WEB6, Tcp(80), DENIED),
    ("0.0.0.0/0 admits any IPv4 source on 443", "198.51.100.1", WEB4, Tcp(443), ALLOWED),
    ("but 0.0.0.0/0 never matches an IPv6 source", "2001:db8:1::1", WEB6, Tcp(443), DENIED),
    ("a pod reaches itself on its own address", WEB6, WEB6, Tcp(9), ALLOWED),
];

#[test]
fn dual_stack_pods_are_matched_on_each_address_and_ip_blocks_by_family() {
    let c = cluster()
        .ns(ns("x"))
        .pod(pod("x", "web").label("app", "web").ip(WEB4).ip(WEB6))
        .pod(pod("x", "client").label("app", "client").ip(CLI4).ip(CLI6))
        .policy(
            policy("x", "web")
                .select(sel!("app" = "web"))
                .ingress_rule(allow().from(pods(sel!("app" = "client"))))
                .ingress_rule(
                    allow()
                        .from(ip_block("203.0.113.0/24"))
                        .from(ip_block("2001:db8::/64").except("2001:db8::/120")),
                )
                .ingress_rule(allow().from(ip_block("0.0.0.0/0")).port(tcp(443))),
        )
        .build();
    check(&c, DUAL_STACK);
    let mixed = verdict(&c, ip(CLI4), ip(WEB6), proto::TCP, Some(80));
    assert_eq!(mixed.reason, Reason::FamilyMismatch);
    assert!(!mixed.allowed);
}

#[rustfmt::skip]
const SELF: &[Case] = &[
    ("a deny-all pod still reaches itself", A1, A1, Tcp(80), ALLOWED),
    ("but not its neighbour", A1, A2, Tcp(80), DENIED),
];

#[test]
fn a_pod_cannot_block_access_to_itself() {
    let c = two_namespaces(vec![policy("a", "deny-all").deny_ingress().deny_egress()]);
    check(&c, SELF);
}

// ---------------------------------------------------------------------------------------------
// Explanations

#[test]
fn decisions_name_the_first_allowing_rule_and_the_isolating_policies() {
    let c = two_namespaces(vec![
        policy("a", "zz-late").ingress_rule(allow().from(pods(sel!()))),
        policy("a", "aa-early")
            .ingress_rule(allow().from(ip_block("203.0.113.0/24")))
            .ingress_rule(allow().from(pods(sel!("app" = "web")))),
    ]);
    // Both policies allow a2 -> a1; the reported rule is the first by (policy name, index).
    let d = verdict(&c, ip(A2), ip(A1), proto::TCP, Some(80));
    assert!(d.allowed);
    let rule = d.ingress_rule().expect("ingress was restricted");
    assert_eq!(rule.policy.to_string(), "a/aa-early");
    assert_eq!(rule.direction, Direction::Ingress);
    assert_eq!(rule.index, 1);
    assert_eq!(
        d.to_string(),
        "allowed: egress: a/a2 is not isolated; ingress: a/a1 allowed by a/aa-early ingress rule 1"
    );

    let d = verdict(&c, ip(B1), ip(A1), proto::TCP, Some(80));
    assert!(!d.allowed);
    match &d.reason {
        Reason::Policies {
            egress: Side::NotIsolated(_),
            ingress: Side::Denied { policies, .. },
        } => {
            let names: Vec<String> = policies.iter().map(|p| p.to_string()).collect();
            assert_eq!(names, ["a/aa-early", "a/zz-late"]);
        }
        other => panic!("unexpected reason {other:?}"),
    }

    let d = verdict(&c, ip(OUTSIDE), ip(B1), proto::UDP, Some(53));
    assert_eq!(
        d.to_string(),
        "allowed: egress: not a pod; ingress: b/b1 is not isolated"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties of the evaluator over generated clusters (these also exercise tests/common)

fn same_family(p: &Probe) -> bool {
    p.src.is_ipv4() == p.dst.is_ipv4()
}

proptest! {
    #![proptest_config(Config { cases: 200, ..Config::default() })]

    #[test]
    fn generated_clusters_are_well_formed((c, probes) in strategy::cluster_and_probes(1..=8)) {
        // Relevant pods have distinct addresses; hostNetwork pods use their node's.
        let mut seen = std::collections::BTreeSet::new();
        for p in c.pods.iter().filter(|p| p.is_policy_relevant()) {
            for a in &p.ips {
                prop_assert!(seen.insert(*a), "address {} used twice", a);
            }
        }
        for p in c.pods.iter().filter(|p| p.host_network) {
            let node = c.nodes.iter().find(|n| Some(&n.name) == p.node_name.as_ref());
            let node = node.expect("hostNetwork pods are scheduled");
            prop_assert!(p.ips.iter().all(|a| node.addresses.contains(a)));
        }
        for pol in &c.policies {
            prop_assert!(pol.ingress.is_some() || pol.egress.is_some());
            prop_assert!(c.namespaces.iter().any(|n| n.name == pol.namespace));
            for rule in pol.ingress.iter().chain(pol.egress.iter()).flatten() {
                prop_assert!(rule.peers.as_ref().is_none_or(|p| !p.is_empty()));
                prop_assert!(rule.ports.as_ref().is_none_or(|p| !p.is_empty()));
                for peer in rule.peers.iter().flatten() {
                    if let Peer::IpBlock(b) = peer {
                        prop_assert_eq!(b.cidr, b.cidr.trunc());
                        prop_assert!(b.except.iter().all(|e| b.cidr.contains(e)));
                    }
                }
            }
        }
        prop_assert!(probes.iter().all(same_family));
    }

    #[test]
    fn without_policies_every_connection_is_allowed((mut c, probes) in strategy::cluster_and_probes(1..=8)) {
        c.policies.clear();
        for p in &probes {
            let d = verdict(&c, p.src, p.dst, p.proto, p.port);
            prop_assert!(d.allowed, "{}: {}", p, d);
        }
    }

    #[test]
    fn adding_a_rule_to_a_policy_never_denies_more((c, probes) in strategy::cluster_and_probes(1..=8), extra in strategy::port()) {
        // Widen every isolating direction with one more rule (a port, any peer).
        let mut wider = c.clone();
        for pol in &mut wider.policies {
            for rules in [&mut pol.ingress, &mut pol.egress].into_iter().flatten() {
                rules.push(Rule { peers: None, ports: Some(vec![extra.clone()]) });
            }
        }
        for p in &probes {
            let before = verdict(&c, p.src, p.dst, p.proto, p.port);
            let after = verdict(&wider, p.src, p.dst, p.proto, p.port);
            prop_assert!(!before.allowed || after.allowed, "{}: {} then {}", p, before, after);
        }
    }

    #[test]
    fn allow_all_rules_open_every_same_family_connection((c, probes) in strategy::cluster_and_probes(1..=8)) {
        let mut open = c.clone();
        for pol in &mut open.policies {
            for rules in [&mut pol.ingress, &mut pol.egress].into_iter().flatten() {
                rules.push(Rule { peers: None, ports: None });
            }
        }
        for p in &probes {
            let d = verdict(&open, p.src, p.dst, p.proto, p.port);
            prop_assert!(d.allowed, "{}: {}", p, d);
        }
    }
}

/// The generators must actually reach the edges the compiler property test relies on.
#[test]
fn generated_probes_cover_the_interesting_outcomes() {
    let mut runner = TestRunner::deterministic();
    let strategy = strategy::cluster_and_probes(8..=8);
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let mut total = 0usize;
    for _ in 0..300 {
        let (c, probes) = strategy
            .new_tree(&mut runner)
            .expect("strategy generates")
            .current();
        for p in probes {
            total += 1;
            let d = verdict(&c, p.src, p.dst, p.proto, p.port);
            let key = match &d.reason {
                Reason::FamilyMismatch => "family mismatch",
                Reason::SamePod(_) => "same pod",
                Reason::FromLocalNode { .. } => "from local node",
                Reason::Policies { egress, ingress } => match (egress, ingress) {
                    (Side::Denied { .. }, _) => "denied at egress",
                    (_, Side::Denied { .. }) => "denied at ingress",
                    (Side::AllowedBy { .. }, Side::AllowedBy { .. }) => "allowed by both",
                    (Side::AllowedBy { .. }, _) => "allowed by egress rule",
                    (_, Side::AllowedBy { .. }) => "allowed by ingress rule",
                    _ => "unrestricted",
                },
            };
            *outcomes.entry(key).or_default() += 1;
            for rule in [d.egress_rule(), d.ingress_rule()].into_iter().flatten() {
                let pol = c
                    .policies
                    .iter()
                    .find(|x| x.key() == rule.policy)
                    .expect("policy");
                let r = &pol.rules(rule.direction).expect("direction")[rule.index];
                let peer_ip = if rule.direction == Direction::Egress {
                    p.dst
                } else {
                    p.src
                };
                if r.ports
                    .iter()
                    .flatten()
                    .any(|x| matches!(x.port, PortMatch::Named(_)))
                {
                    *outcomes
                        .entry("allowed by a rule with a named port")
                        .or_default() += 1;
                }
                if r.ports.iter().flatten().any(|x| matches!(x.port, PortMatch::Range(a, b) if a != b && (p.port == Some(a) || p.port == Some(b)))) {
                    *outcomes.entry("allowed at a range end").or_default() += 1;
                }
                if r.peers
                    .iter()
                    .flatten()
                    .any(|x| matches!(x, Peer::IpBlock(b) if b.contains(peer_ip)))
                {
                    *outcomes.entry("allowed by an ipBlock").or_default() += 1;
                }
            }
            let edges = strategy::block_edges(&c);
            if edges.contains(&p.src) || edges.contains(&p.dst) {
                *outcomes.entry("at an ipBlock edge").or_default() += 1;
            }
            if p.port.is_none()
                && d.allowed
                && matches!(d.reason, Reason::Policies { .. })
                && (d.ingress_rule().is_some() || d.egress_rule().is_some())
            {
                *outcomes.entry("icmp allowed by a rule").or_default() += 1;
            }
        }
    }
    eprintln!("probe outcomes over {total} probes: {outcomes:?}");
    // Minimum share of probes, in per mille.
    for (key, min) in [
        ("denied at egress", 50),
        ("denied at ingress", 50),
        ("allowed by both", 5),
        ("allowed by egress rule", 20),
        ("allowed by ingress rule", 20),
        ("unrestricted", 50),
        ("from local node", 10),
        ("same pod", 2),
        ("icmp allowed by a rule", 2),
        ("allowed by a rule with a named port", 2),
        ("allowed at a range end", 1),
        ("allowed by an ipBlock", 5),
        ("at an ipBlock edge", 20),
    ] {
        let n = outcomes.get(key).copied().unwrap_or(0);
        assert!(
            n * 1000 >= total * min,
            "{key}: {n} of {total} probes (want >= {min} per mille): {outcomes:?}"
        );
    }
    assert_eq!(
        outcomes.get("family mismatch"),
        None,
        "probes pair addresses of one family"
    );
}
