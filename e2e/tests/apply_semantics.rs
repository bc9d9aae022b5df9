//! Kernel tests of `nftpol apply`: NetworkPolicy semantics, proven with real traffic.
//!
//! Each test builds the fixture cluster of `apply_support` (2 nodes, namespaces x/y/z with pods
//! a/b/c, dual-stack, two external hosts; the table of pods, labels and named ports is in that
//! module's docs), writes NetworkPolicies as Kubernetes YAML next to the cluster snapshot, runs
//! `nftpol apply --node <node> -f <dir> --json` inside each node, and checks connectivity
//! matrices (TCP and UDP, IPv4 and IPv6) against expectations written by hand from the policy
//! text: the comment above each policy says what it allows, the expectation closure says the
//! same in code. The rules the spec adds everywhere (a pod reaches itself, a pod's own node
//! reaches it, nodes and hosts have no policy) live once in `apply_support::Spec`. Every
//! blocked cell must be a silent drop: the probe waited its whole timeout, no reset and no
//! ICMP error came back.
//!
//! Two readings worth knowing: egress has no node exception (the spec's "the only allowed
//! connections from the pod are those allowed by the egress list"), so an egress-isolated pod
//! does not reach even its own node's address; and namespace `y` is quoted in the manifests,
//! because an unquoted `y` is the boolean true to YAML 1.1 readers (kubectl's included).
//!
//! Needs root (network namespaces, nftables) and the built binary (`cargo build --bin
//! nftpol`, or `NFTPOL_BIN`); skips loudly otherwise.

mod apply_support;

use std::time::Duration;

use apply_support::*;
use nftpol_e2e::apply::{list_table, objects};
use nftpol_e2e::{
    Cell, Family, Matrix, Outcome, Probe, Proto, Service, probe_detailed, service_ip,
    skip_unless_root,
};

/// Applies `policies` on both nodes and checks that both tables were written.
fn apply(fx: &Fixture, policies: &str) {
    for s in fx.apply(policies) {
        assert!(s.changed, "apply on {} sent nothing: {:?}", s.node, s.raw);
    }
}

fn tcp_udp(m: Matrix) -> Matrix {
    m.case(WEB.0, WEB.1).case(DNS.0, DNS.1)
}

#[test]
fn default_deny_ingress_isolates_a_namespace_but_its_node_still_reaches_its_pods() {
    skip_unless_root!(
        "default_deny_ingress_isolates_a_namespace_but_its_node_still_reaches_its_pods"
    );
    let fx = Fixture::new("ap-deny-in");
    apply(
        &fx,
        r#"
# Every pod of x is isolated for ingress and nothing is allowed in.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#,
    );
    let spec = Spec {
        ingress: &|_, to, _, _, _| ns(to) != Some("x"),
        egress: &open,
    };
    // Same-node (x/c -> x/a on node-0) and cross-node (y/a -> x/a) sources are both dropped;
    // node-0 still reaches x/a and x/c (kubelet probes), node-1 does not (not their node).
    let results = run_all(vec![
        tcp_udp(fx.full_matrix()),
        fx.full_matrix().case(Proto::Icmp, 0),
    ]);
    check("default deny ingress", &results[0], |c| spec.outcome(c));
    check("default deny ingress, icmp", &results[1], |c| {
        spec.outcome(c)
    });
}

#[test]
fn default_deny_egress_blocks_what_pods_send_leaves_their_ingress_open_and_replies_pass() {
    skip_unless_root!(
        "default_deny_egress_blocks_what_pods_send_leaves_their_ingress_open_and_replies_pass"
    );
    let fx = Fixture::new("ap-deny-eg");
    apply(
        &fx,
        r#"
# Every pod of y is isolated for egress and may send nothing; policyTypes says Egress only, so
# their ingress stays open (and the replies of what others send them must pass).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: "y"
spec:
  podSelector: {}
  policyTypes: [Egress]
---
# Egress rules and no policyTypes: policyTypes defaults to [Ingress, Egress], so x/a is
# isolated for ingress too, with no ingress rule: nothing may reach it. It may send to the
# pods of its own namespace.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-rules-only
  namespace: x
spec:
  podSelector:
    matchLabels: {pod: a}
  egress:
  - to:
    - podSelector: {}
"#,
    );
    let spec = Spec {
        ingress: &|_, to, _, _, _| to != "x/a",
        egress: &|from, to, _, _, _| match from {
            "x/a" => is_pod(to) && ns(to) == Some("x"),
            _ => ns(from) != Some("y"),
        },
    };
    // Egress has no node exception: a y pod cannot reach even its own node's address.
    let mut matrices = vec![tcp_udp(fx.full_matrix())];
    matrices.extend(fx.outside(fx.all_rows(), &[80], &[53]));
    let results = run_all(matrices);
    check("egress isolation, pods", &results[0], |c| spec.outcome(c));
    check_all("egress isolation, nodes and hosts", &results[1..], |c| {
        spec.outcome(c)
    });
}

#[test]
fn allow_all_rules_reopen_isolated_pods_and_an_empty_peer_list_means_everyone() {
    skip_unless_root!("allow_all_rules_reopen_isolated_pods_and_an_empty_peer_list_means_everyone");
    let fx = Fixture::new("ap-allow-all");
    // First the denials alone, so that the open matrix below proves the allow rules work.
    let deny = r#"
# x: deny everything both ways ...
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
# y: deny everything both ways (empty rule lists).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-peer-lists, namespace: "y"}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress: []
"#;
    apply(&fx, deny);
    let denied = Spec {
        ingress: &|_, to, _, _, _| !matches!(ns(to), Some("x" | "y")),
        egress: &|from, _, _, _, _| !matches!(ns(from), Some("x" | "y")),
    };
    check("deny all first", &tcp_udp(fx.full_matrix()).run(), |c| {
        denied.outcome(c)
    });
    apply(
        &fx,
        r#"
# x: deny everything both ways ...
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
# ... and allow everything in (a rule without "from") ...
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: x}
spec:
  podSelector: {}
  ingress:
  - {}
---
# ... and everything out: the allowed set is the union of the policies.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - {}
---
# y: isolated both ways by rules whose peer lists are empty: an empty "from"/"to" is the same
# as an absent one, every source / destination.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-peer-lists, namespace: "y"}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: []
  egress:
  - to: []
"#,
    );
    let mut matrices = vec![tcp_udp(fx.full_matrix())];
    matrices.extend(fx.outside(Matrix::new(TIMEOUT).rows(&fx.pods), &[80], &[53]));
    let results = run_all(matrices);
    check("allow all, pods", &results[0], |_| Outcome::Connected);
    check_all("allow all, to nodes and hosts", &results[1..], |_| {
        Outcome::Connected
    });
}

#[test]
fn pod_and_namespace_selectors_and_both_in_one_peer_versus_two_peers() {
    skip_unless_root!("pod_and_namespace_selectors_and_both_in_one_peer_versus_two_peers");
    let fx = Fixture::new("ap-selectors");
    apply(
        &fx,
        r#"
# x/a accepts the pods labelled pod=b of its own namespace x (only x/b).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - podSelector:
        matchLabels: {pod: b}
---
# x/b accepts every pod of the namespaces labelled team=blue (y).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-blue, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: blue}
---
# x/c: ONE peer with both selectors (AND): pods labelled pod=a in team=blue namespaces (y/a).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-blue-a, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: blue}
      podSelector:
        matchLabels: {pod: a}
---
# z/c: TWO peers (OR): every pod of team=blue namespaces, or pod=a of z itself (z/a).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-blue-or-a, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: blue}
    - podSelector:
        matchLabels: {pod: a}
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, _, _| match to {
            "x/a" => from == "x/b",
            "x/b" => is_pod(from) && ns(from) == Some("y"),
            "x/c" => from == "y/a",
            "z/c" => (is_pod(from) && ns(from) == Some("y")) || from == "z/a",
            _ => true,
        },
        egress: &open,
    };
    let result = tcp_udp(fx.full_matrix()).run();
    check("selectors", &result, |c| spec.outcome(c));
}

#[test]
fn match_expressions_in_notin_exists_and_doesnotexist() {
    skip_unless_root!("match_expressions_in_notin_exists_and_doesnotexist");
    let fx = Fixture::new("ap-exprs");
    apply(
        &fx,
        r#"
# x/a accepts pods of any namespace whose tier is web or db.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tier-in, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchExpressions:
        - {key: tier, operator: In, values: [web, db]}
---
# y/a accepts pods of any namespace whose tier is not web, including pods without a tier.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tier-notin, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchExpressions:
        - {key: tier, operator: NotIn, values: [web]}
---
# z/b accepts the pods of z that have a tier label at all.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tier-exists, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: tier, operator: Exists}
---
# y/c (selected by an expression too) accepts every pod of namespaces without a team label (x).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-team, namespace: "y"}
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: In, values: [c]}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: team, operator: DoesNotExist}
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, _, _| match to {
            "x/a" => is_pod(from) && matches!(tier(from), Some("web" | "db")),
            "y/a" => is_pod(from) && tier(from) != Some("web"),
            "z/b" => is_pod(from) && ns(from) == Some("z") && tier(from).is_some(),
            "y/c" => is_pod(from) && team(ns(from).unwrap_or_default()).is_none(),
            _ => true,
        },
        egress: &open,
    };
    let result = tcp_udp(fx.full_matrix()).run();
    check("match expressions", &result, |c| spec.outcome(c));
}

#[test]
fn empty_pod_selector_empty_namespace_selector_empty_rule_list_ports_or_peers_alone() {
    skip_unless_root!(
        "empty_pod_selector_empty_namespace_selector_empty_rule_list_ports_or_peers_alone"
    );
    let fx = Fixture::new("ap-empty");
    apply(
        &fx,
        r#"
# x/a: an empty podSelector as a peer is every pod of the policy's own namespace.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-own-namespace, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - podSelector: {}
---
# x/b: an empty namespaceSelector is every pod of every namespace, but nothing outside pods.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-all-pods, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - namespaceSelector: {}
---
# x/c: isolated by an empty list of rules: nothing at all may come in.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  policyTypes: [Ingress]
  ingress: []
---
# y/a: a rule with ports and no peers: anyone (pods, nodes, hosts), TCP 80 only (the
# protocol defaults to TCP).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-anyone, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - ports:
    - port: 80
---
# y/b: a rule with peers and no ports: the b pods of every namespace, on every port and
# protocol.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-pods-any-port, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchLabels: {pod: b}
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, proto, port| match to {
            "x/a" => is_pod(from) && ns(from) == Some("x"),
            "x/b" => is_pod(from),
            "x/c" => false,
            "y/a" => (proto, port) == (Proto::Tcp, 80),
            "y/b" => is_pod(from) && from.ends_with("/b"),
            _ => true,
        },
        egress: &open,
    };
    let results = run_all(vec![
        tcp_udp(fx.full_matrix()),
        fx.full_matrix().case(Proto::Tcp, 81),
    ]);
    check("empty selectors, tcp/80 udp/53", &results[0], |c| {
        spec.outcome(c)
    });
    check("empty selectors, tcp/81", &results[1], |c| spec.outcome(c));
}

#[test]
fn ip_blocks_with_except_in_both_families_for_ingress_and_egress() {
    skip_unless_root!("ip_blocks_with_except_in_both_families_for_ingress_and_egress");
    let fx = Fixture::new("ap-ipblock");
    apply(
        &fx,
        r#"
# x/a (node-0) accepts the node network 10.0.0.0/24 and fd00::/64 except h1 (.201 / ::201):
# h0 and node-1 get in, h1 and every pod (10.244.x, fd00:10:244:x::) do not.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-node-network, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/24
        except: [10.0.0.201/32]
    - ipBlock:
        cidr: fd00::/64
        except: ["fd00::201/128"]
---
# z/b (node-1) accepts node-0's IPv4 pod range only: the pods of node-0 over IPv4, never over
# IPv6 (an ipBlock never matches the other family), and not node-0 itself (10.0.0.1).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-node-0-pods-v4, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.244.0.0/24
---
# y/b (node-0) may send to the node network except h1, in both families: nodes and h0, no pod.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-node-network, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: b}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
        except: [10.0.0.201/32]
    - ipBlock:
        cidr: fd00::/64
        except: ["fd00::201/128"]
"#,
    );
    let node_network_but_h1 = |peer: &str| matches!(peer, "node-0" | "node-1" | "h0");
    let spec = Spec {
        ingress: &|from, to, family, _, _| match to {
            "x/a" => node_network_but_h1(from),
            "z/b" => family == Family::V4 && node_of(from) == Some(0),
            _ => true,
        },
        egress: &|from, to, _, _, _| match from {
            "y/b" => node_network_but_h1(to),
            _ => true,
        },
    };
    let mut matrices = vec![tcp_udp(fx.full_matrix())];
    matrices.extend(fx.outside(Matrix::new(TIMEOUT).rows(&fx.pods), &[80], &[53]));
    let results = run_all(matrices);
    check("ipBlock, pods", &results[0], |c| spec.outcome(c));
    check_all("ipBlock, to nodes and hosts", &results[1..], |c| {
        spec.outcome(c)
    });
}

#[test]
fn numeric_ports_and_protocols_a_tcp_rule_does_not_open_udp() {
    skip_unless_root!("numeric_ports_and_protocols_a_tcp_rule_does_not_open_udp");
    let fx = Fixture::new("ap-ports");
    apply(
        &fx,
        r#"
# x/a: TCP 53 from anyone; UDP 53 (same number, other protocol) stays closed.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tcp-53, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - ports:
    - {protocol: TCP, port: 53}
---
# x/b: UDP 53 from the pods of x only (peers AND ports).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-53-from-x, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - podSelector: {}
    ports:
    - {protocol: UDP, port: 53}
---
# y/c: two ports in one rule (ORed), from anyone: TCP 80 and UDP 53.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two-ports, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - ports:
    - port: 80
    - {port: 53, protocol: UDP}
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, proto, port| match to {
            "x/a" => (proto, port) == (Proto::Tcp, 53),
            "x/b" => is_pod(from) && ns(from) == Some("x") && (proto, port) == (Proto::Udp, 53),
            "y/c" => matches!((proto, port), (Proto::Tcp, 80) | (Proto::Udp, 53)),
            _ => true,
        },
        egress: &open,
    };
    let results = run_all(vec![
        tcp_udp(fx.full_matrix()),
        fx.full_matrix().case(Proto::Tcp, 53).case(Proto::Tcp, 81),
    ]);
    check("ports, tcp/80 udp/53", &results[0], |c| spec.outcome(c));
    check("ports, tcp/53 tcp/81", &results[1], |c| spec.outcome(c));
}

#[test]
fn named_ports_resolve_on_the_selected_pod_for_ingress_and_on_each_destination_for_egress() {
    skip_unless_root!(
        "named_ports_resolve_on_the_selected_pod_for_ingress_and_on_each_destination_for_egress"
    );
    let fx = Fixture::new("ap-named");
    apply(
        &fx,
        r#"
# z/a and z/b accept anyone on their port named "web": z/a declares web = TCP 80, z/b
# declares web = TCP 81, so the same rule opens 80 on one and 81 on the other.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-by-name, namespace: z}
spec:
  podSelector:
    matchExpressions:
    - {key: pod, operator: In, values: [a, b]}
  ingress:
  - ports:
    - port: web
---
# x/c may send to any pod, on that pod's port named "dns" over UDP: x/a and y/a declare UDP
# 53, y/b UDP 5353, y/c declares dns as TCP 53 (wrong protocol: nothing), the others have no
# such port (nothing). Nodes and hosts are not pods: nothing.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-by-name, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {}
    ports:
    - {port: dns, protocol: UDP}
"#,
    );
    let spec = Spec {
        ingress: &|_, to, _, proto, port| match to {
            "z/a" => (proto, port) == (Proto::Tcp, 80),
            "z/b" => (proto, port) == (Proto::Tcp, 81),
            _ => true,
        },
        egress: &|from, to, _, proto, port| match from {
            "x/c" => named_ports(to)
                .iter()
                .any(|p| *p == ("dns", Proto::Udp, port) && proto == Proto::Udp),
            _ => true,
        },
    };
    let z = [fx.pod("z/a").clone(), fx.pod("z/b").clone()];
    let mut matrices = vec![
        // Ingress: everyone to z/a and z/b on 80 and 81.
        Matrix::new(TIMEOUT)
            .rows(&fx.pods)
            .rows(fx.cluster.nodes())
            .rows(&fx.hosts)
            .pod_cols(&z, Family::V4)
            .pod_cols(&z, Family::V6)
            .case(Proto::Tcp, 80)
            .case(Proto::Tcp, 81),
        // Egress: x/c (and x/a as a control) to every pod, on every dns port.
        Matrix::new(TIMEOUT)
            .row(fx.pod("x/c"))
            .row(fx.pod("x/a"))
            .pod_cols(&fx.pods, Family::V4)
            .pod_cols(&fx.pods, Family::V6)
            .case(Proto::Udp, 53)
            .case(Proto::Udp, 5353)
            .case(Proto::Tcp, 53)
            .case(Proto::Tcp, 80),
    ];
    // ... and to the nodes and hosts, which are no pods.
    matrices.extend(fx.outside(
        Matrix::new(TIMEOUT).row(fx.pod("x/c")).row(fx.pod("x/a")),
        &[53, 80],
        &[53, 5353],
    ));
    let results = run_all(matrices);
    check("named ports, ingress", &results[0], |c| spec.outcome(c));
    check_all("named ports, egress", &results[1..], |c| spec.outcome(c));
}

#[test]
fn end_port_ranges_include_both_ends_and_nothing_outside() {
    skip_unless_root!("end_port_ranges_include_both_ends_and_nothing_outside");
    let fx = Fixture::new("ap-endport");
    apply(
        &fx,
        r#"
# z/a accepts anyone on TCP 1000-1002 (both ends included), nothing else (not UDP 1000).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range-in, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - ports:
    - {protocol: TCP, port: 1000, endPort: 1002}
---
# y/b may send to anyone on TCP 999-1001 only: to z/a that leaves 1000-1001.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range-out, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: b}
  policyTypes: [Egress]
  egress:
  - ports:
    - {protocol: TCP, port: 999, endPort: 1001}
"#,
    );
    let spec = Spec {
        ingress: &|_, to, _, proto, port| match to {
            "z/a" => proto == Proto::Tcp && (1000..=1002).contains(&port),
            _ => true,
        },
        egress: &|from, _, _, proto, port| match from {
            "y/b" => proto == Proto::Tcp && (999..=1001).contains(&port),
            _ => true,
        },
    };
    let cols = [
        fx.pod("z/a").clone(),
        fx.pod("z/b").clone(),
        fx.pod("x/c").clone(),
    ];
    let mut m = Matrix::new(TIMEOUT)
        .rows(&fx.pods)
        .rows(fx.cluster.nodes())
        .rows(&fx.hosts)
        .pod_cols(&cols, Family::V4)
        .pod_cols(&cols, Family::V6);
    for port in 999..=1003 {
        m = m.case(Proto::Tcp, port);
    }
    let result = m.case(Proto::Udp, 1000).run();
    check("endPort", &result, |c| spec.outcome(c));
}

#[test]
fn same_node_traffic_needs_both_egress_and_ingress_and_each_node_enforces_its_side() {
    skip_unless_root!(
        "same_node_traffic_needs_both_egress_and_ingress_and_each_node_enforces_its_side"
    );
    let fx = Fixture::new("ap-both-ends");
    apply(
        &fx,
        r#"
# x/a (node-0) may send only to x/b (node-1), x/c (node-0), z/a (node-0) and y/a (node-1).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchExpressions:
        - {key: pod, operator: In, values: [b, c]}
    - namespaceSelector:
        matchExpressions:
        - {key: team, operator: In, values: [red, blue]}
      podSelector:
        matchLabels: {pod: a}
---
# x/c (node-0) accepts only y/b: x/a -> x/c is allowed out but not in (same node).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-y-b, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: "y"}
      podSelector:
        matchLabels: {pod: b}
---
# x/b (node-1) accepts only y/c: x/a -> x/b leaves node-0 and must be dropped by node-1.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-y-c, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: "y"}
      podSelector:
        matchLabels: {pod: c}
---
# Every pod of z (z/a, z/c on node-0, z/b on node-1) accepts only x/a: x/a -> z/a passes both
# checks on node-0; x/a -> z/c (same node) and x/a -> z/b (node-1 would let it in) are
# stopped by x/a's egress on node-0.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-x-a, namespace: z}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: x}
      podSelector:
        matchLabels: {pod: a}
---
# y/a (node-1) accepts only x/a: both checks pass, one on each node.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-x-a, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: x}
      podSelector:
        matchLabels: {pod: a}
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, _, _| match to {
            "x/c" => from == "y/b",
            "x/b" => from == "y/c",
            "z/a" | "z/b" | "z/c" | "y/a" => from == "x/a",
            _ => true,
        },
        egress: &|from, to, _, _, _| match from {
            "x/a" => matches!(to, "x/b" | "x/c" | "z/a" | "y/a"),
            _ => true,
        },
    };
    let result = tcp_udp(fx.full_matrix()).run();
    check("both ends", &result, |c| spec.outcome(c));
    // The cells that prove each point, spelled out.
    for (to, want) in [
        ("x/c", Outcome::Blocked),   // same node, egress yes, ingress no
        ("z/a", Outcome::Connected), // same node, both yes
        ("z/c", Outcome::Blocked),   // same node, egress no, ingress yes
        ("x/b", Outcome::Blocked),   // cross node, node-0 egress yes, node-1 ingress no
        ("y/a", Outcome::Connected), // cross node, both yes
        ("z/b", Outcome::Blocked),   // cross node, node-0 egress no, node-1 ingress yes
    ] {
        assert_eq!(
            result.outcome("x/a", to, Proto::Tcp, 80),
            Some(want),
            "x/a -> {to}"
        );
    }
}

#[test]
fn host_network_pods_are_never_isolated_nor_matched_as_pod_peers() {
    skip_unless_root!("host_network_pods_are_never_isolated_nor_matched_as_pod_peers");
    let fx = Fixture::new("ap-hostnet");
    // The harness has no hostNetwork pods of its own: the snapshot gains x/hn, a hostNetwork
    // pod on node-1 labelled pod=hn (its IPs are node-1's), and its "containers" are the
    // servers in node-1's namespace.
    let mut objs = fx.objects();
    objects::add_host_network_pod(&mut objs, fx.cluster.node(1), "x", "hn", &[("pod", "hn")]);
    let summaries = fx.apply_objects(
        &objs,
        r#"
# Every pod of x, x/hn included by its labels, is isolated both ways and allows only peers
# labelled pod=hn. hostNetwork pods are ignored by selectors: x/hn is not isolated and is no
# pod peer, so node-1's address (which x/hn uses) is allowed nowhere in x.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-hn, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector:
        matchLabels: {pod: hn}
  egress:
  - to:
    - podSelector:
        matchLabels: {pod: hn}
---
# z/a accepts node-1's IPv4 address by ipBlock: the way to allow a hostNetwork pod.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-node-1-v4, namespace: z}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.2/32
"#,
    );
    assert!(summaries.iter().all(|s| s.changed));
    let spec = Spec {
        ingress: &|from, to, family, _, _| match to {
            _ if ns(to) == Some("x") => false,
            "z/a" => from == "node-1" && family == Family::V4,
            _ => true,
        },
        egress: &|from, _, _, _, _| ns(from) != Some("x"),
    };
    let node0_pods: Vec<_> = fx.pods.iter().filter(|p| p.node() == 0).cloned().collect();
    let mut to_hn = Matrix::new(TIMEOUT).rows(&node0_pods).rows(&fx.hosts);
    for ip in fx.cluster.node(1).ips() {
        to_hn = to_hn.col("node-1", ip);
    }
    let mut matrices = vec![
        tcp_udp(fx.full_matrix()),
        // UDP into x/hn (node-1's addresses) from node-0's pods and the hosts.
        to_hn.case(DNS.0, DNS.1),
    ];
    // Into x/hn and the other addresses outside pods: open to everyone but the
    // egress-isolated x pods.
    matrices.extend(fx.outside(fx.all_rows(), &[80], &[53]));
    let results = run_all(matrices);
    check("hostNetwork, pods", &results[0], |c| spec.outcome(c));
    check_all("hostNetwork, nodes and hosts", &results[1..], |c| {
        spec.outcome(c)
    });
    // Isolating x/hn could not show in traffic (a node's own traffic never reaches the forward
    // hook), so look at what node-1 dispatches: its address is in no per-pod map.
    let listing = list_table(fx.cluster.node(1)).unwrap().unwrap();
    for map in [
        "ingress_pods_v4",
        "egress_pods_v4",
        "ingress_pods_v6",
        "egress_pods_v6",
    ] {
        let body = map_body(&listing, map);
        for ip in fx.cluster.node(1).ips() {
            assert!(
                !body.contains(&format!("{ip} :")),
                "{map} dispatches node-1's address {ip}:\n{body}"
            );
        }
    }
}

/// The text of `map <name> { ... }` in an `nft list` output.
fn map_body(listing: &str, name: &str) -> String {
    let start = listing
        .find(&format!("map {name} {{"))
        .unwrap_or_else(|| panic!("no map {name} in\n{listing}"));
    let rest = &listing[start..];
    let end = rest.find("\n\t}").unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn services_policy_is_enforced_on_the_backend_after_dnat_and_hairpin_reaches_itself() {
    skip_unless_root!(
        "services_policy_is_enforced_on_the_backend_after_dnat_and_hairpin_reaches_itself"
    );
    let fx = Fixture::new("ap-service");
    // Service "web" (10.96.0.10, fd00:10:96::10; TCP 80 and UDP 53) -> y/b (node-0);
    // service "self" (10.96.0.20, fd00:10:96::20) -> x/a (node-0).
    for (n, backend) in [(10u16, "y/b"), (20, "x/a")] {
        for family in [Family::V4, Family::V6] {
            for (proto, port) in [WEB, DNS] {
                fx.cluster
                    .add_service(
                        Service::new(
                            &format!("svc-{backend}"),
                            proto,
                            service_ip(family, n),
                            port,
                        )
                        .backend(ip(&fx, backend, family), port),
                    )
                    .unwrap();
            }
        }
    }
    apply(
        &fx,
        r#"
# y/b accepts the pods labelled pod=a of every namespace, and x/c.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a-pods-and-x-c, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: b}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchLabels: {pod: a}
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: x}
      podSelector:
        matchLabels: {pod: c}
---
# x/c may send only to y/b: reaching it through the Service works only if egress is checked
# against the backend address, not the ClusterIP.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-to-y-b, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {team: blue}
      podSelector:
        matchLabels: {pod: b}
---
# x/a is isolated both ways and allows nothing; it still reaches itself through its own
# Service (hairpin).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress, Egress]
"#,
    );
    let spec = Spec {
        ingress: &|from, to, _, _, _| match to {
            "y/b" => (is_pod(from) && from.ends_with("/a")) || from == "x/c",
            "x/a" => false,
            _ => true,
        },
        egress: &|from, to, _, _, _| match from {
            "x/c" => to == "y/b",
            "x/a" => false,
            _ => true,
        },
    };
    let mut m = Matrix::new(TIMEOUT).rows(&fx.pods).rows(fx.cluster.nodes());
    for family in [Family::V4, Family::V6] {
        m = m
            .col("svc y/b", service_ip(family, 10))
            .col("svc x/a", service_ip(family, 20))
            .col("y/b", ip(&fx, "y/b", family))
            .col("x/a", ip(&fx, "x/a", family));
    }
    let result = tcp_udp(m).run();
    // A Service column stands for its backend: the policy sees the backend's address.
    check("services", &result, |c| {
        let to = match c.to {
            "svc y/b" => "y/b",
            "svc x/a" => "x/a",
            other => other,
        };
        spec.outcome(&Cell { to, ..*c })
    });
    // The points, spelled out (TCP, IPv4).
    for (from, to, want) in [
        ("z/a", "svc y/b", Outcome::Connected), // allowed, same node
        ("y/a", "svc y/b", Outcome::Connected), // allowed, DNAT on node-1, checked on node-0
        ("x/c", "svc y/b", Outcome::Connected), // egress allows the backend
        ("x/b", "svc y/b", Outcome::Blocked),   // denied, cross node
        ("z/c", "svc y/b", Outcome::Blocked),   // denied, same node
        ("x/a", "svc x/a", Outcome::Connected), // hairpin to itself, isolated both ways
        ("node-0", "svc x/a", Outcome::Connected), // the node reaches its isolated pod
    ] {
        assert_eq!(
            result.outcome(from, to, Proto::Tcp, 80),
            Some(want),
            "{from} -> {to}"
        );
    }
}

#[test]
fn denied_connections_are_dropped_silently_never_reset_or_answered_with_icmp() {
    skip_unless_root!("denied_connections_are_dropped_silently_never_reset_or_answered_with_icmp");
    let fx = Fixture::new("ap-silent");
    apply(
        &fx,
        r#"
# x/a accepts nothing; y/a may send nothing.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a-in, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a-out, namespace: "y"}
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Egress]
"#,
    );
    let xa = fx.pod("x/a");
    let ya = fx.pod("y/a");
    let zb = fx.pod("z/b");
    // Sources: same node (y/b, node-0), other node (x/b), outside (h0); and y/a's egress.
    let mut cases = Vec::new();
    for from in ["y/b", "x/b"] {
        for family in [Family::V4, Family::V6] {
            cases.push((from, xa, family));
        }
    }
    for family in [Family::V4, Family::V6] {
        cases.push(("y/a", zb, family));
    }
    let long = Duration::from_secs(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .flat_map(|(from, to, family)| {
                [Proto::Tcp, Proto::Udp, Proto::Icmp].map(|proto| {
                    let port = if proto == Proto::Udp { 53 } else { 80 };
                    let src = fx.pod(from);
                    let dst = to.ip(*family).unwrap();
                    s.spawn(move || {
                        let r = probe_detailed(&src.netns, &Probe::new(proto, dst, port, long));
                        (from.to_string(), to.key(), dst, proto, r)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (from, to, dst, proto, r) in &results {
        // No reset, no port/host unreachable, no EPERM: the probe waited the whole time.
        assert_eq!(
            r.outcome,
            Outcome::Blocked,
            "{from} -> {to} {dst} {proto}: {r:?}"
        );
        assert!(
            r.elapsed >= long.mul_f64(0.95),
            "{from} -> {to} {proto} ended early: {r:?}"
        );
        let detail = r.detail.as_deref().unwrap_or_default();
        assert!(
            is_timeout(detail),
            "{from} -> {to} {proto}: not a timeout: {detail}"
        );
    }
    // The packets never reached the servers.
    for (server, peer) in [
        (xa.netns.server(Proto::Tcp, 80).unwrap(), fx.pod("y/b")),
        (xa.netns.server(Proto::Udp, 53).unwrap(), fx.pod("x/b")),
        (zb.netns.server(Proto::Tcp, 80).unwrap(), ya),
    ] {
        for ip in &peer.ips {
            assert!(!server.received_from(*ip), "{server:?} received from {ip}");
        }
    }
    // And nftpol's drop rules counted them: x/a's ingress chain on node-0 and node-1's
    // forward path for y/a's egress.
    let node0 = list_table(fx.cluster.node(0)).unwrap().unwrap();
    let node1 = list_table(fx.cluster.node(1)).unwrap().unwrap();
    let (dropped_in, _) = counter_of(&node0, "x/a ingress");
    let (dropped_out, _) = counter_of(&node1, "y/a egress");
    assert!(
        dropped_in >= 12,
        "x/a ingress drops counted: {dropped_in}\n{node0}"
    );
    assert!(
        dropped_out >= 6,
        "y/a egress drops counted: {dropped_out}\n{node1}"
    );
    // Sanity: the same probes to an open port of an unisolated pod connect.
    let ok = probe_detailed(
        &fx.pod("y/b").netns,
        &Probe::new(Proto::Tcp, zb.ipv4().unwrap(), 80, TIMEOUT),
    );
    assert_eq!(ok.outcome, Outcome::Connected, "{ok:?}");
}
