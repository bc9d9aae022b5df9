//! Kernel tests of `nftpol apply` over time: changed inputs send only their delta, an
//! unchanged input sends nothing, hand-made damage is repaired exactly, bad input changes
//! nothing.
//!
//! The fixture is the cluster of `apply_support` (see its docs). The policies here all protect
//! x/a (node-0). After every step the test checks the traffic (small matrices towards x/a) and
//! the `--json` summary of both nodes. The expected summaries follow from the table layout in
//! ARCHITECTURE.md, counted by hand: x/a's allow relation lives in maps keyed by x/a's own
//! address (one element per peer address, port and family), per policy rule there is one
//! `np_...` chain, and a node's table holds only what concerns its own pods, so node-1 (which
//! runs none of the pods involved) sees no change at all after its first apply.
//!
//! Needs root and the built binary (`cargo build --bin nftpol`); skips loudly otherwise.

mod apply_support;

use std::collections::{BTreeMap, BTreeSet};

use apply_support::*;
use nftpol_e2e::apply::{ApplySummary, list_table, objects};
use nftpol_e2e::{Family, Matrix, Outcome, Pod, PodSpec, Proto, skip_unless_root};
use serde_json::Value;

/// Policy: x/a accepts pods labelled role=friend of its namespace on TCP `port`.
fn friends_policy(port: u16) -> String {
    format!(
        r#"
# x/a accepts the pods of x labelled role=friend, on TCP {port}.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-friends, namespace: x}}
spec:
  podSelector:
    matchLabels: {{pod: a}}
  ingress:
  - from:
    - podSelector:
        matchLabels: {{role: friend}}
    ports:
    - {{protocol: TCP, port: {port}}}
"#
    )
}

/// Policy: x/a accepts every pod of team=blue namespaces (y) on UDP 53.
const DNS_FROM_BLUE: &str = r#"
# x/a accepts every pod of the team=blue namespaces (y), on UDP 53.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-from-blue, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: a}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: blue}
    ports:
    - {protocol: UDP, port: 53}
"#;

/// The snapshot with role=friend on `friends`.
fn snapshot(fx: &Fixture, friends: &[&str]) -> Value {
    let mut objs = fx.objects();
    for key in friends {
        let (ns, name) = key.split_once('/').unwrap();
        // x/d carries the label from its PodSpec already.
        if fx
            .cluster
            .pod(ns, name)
            .is_some_and(|p| !p.spec.labels.contains_key("role"))
        {
            assert!(objects::set_pod_label(
                &mut objs,
                ns,
                name,
                "role",
                Some("friend")
            ));
        }
    }
    objs
}

/// What x/a currently accepts, as the test's own model: friends on one TCP port, team=blue
/// pods on UDP 53.
struct Allowed<'a> {
    friends: &'a [&'a str],
    friends_port: Option<u16>,
    dns_from_blue: bool,
}

impl Allowed<'_> {
    fn isolated(&self) -> bool {
        self.friends_port.is_some() || self.dns_from_blue
    }

    fn allows(&self, from: &str, proto: Proto, port: u16) -> bool {
        !self.isolated()
            || (self.friends.contains(&from)
                && Some(port) == self.friends_port
                && proto == Proto::Tcp)
            || (self.dns_from_blue && ns(from) == Some("y") && (proto, port) == (Proto::Udp, 53))
    }
}

/// Probes x/a (both families) from x/b, x/c, y/a, y/b and `extra` on TCP 80, TCP 81, UDP 53.
fn check_traffic(fx: &Fixture, step: &str, extra: &[Pod], allowed: &Allowed) {
    let xa = fx.pod("x/a");
    let m = Matrix::new(TIMEOUT)
        .rows(["x/b", "x/c", "y/a", "y/b"].map(|k| fx.pod(k)))
        .rows(extra)
        .col("x/a", xa.ipv4().unwrap())
        .col("x/a", xa.ipv6().unwrap())
        .case(Proto::Tcp, 80)
        .case(Proto::Tcp, 81)
        .case(Proto::Udp, 53);
    check(step, &m.run(), |c| {
        Outcome::from(allowed.allows(c.from, c.proto, c.port))
    });
}

/// Asserts the shape of a delta: `(chains_added, chains_refilled, chains_deleted,
/// elements_added, elements_deleted, rules_added)`, not a replacement, something sent.
#[track_caller]
fn assert_delta(step: &str, s: &ApplySummary, want: (u64, u64, u64, u64, u64, u64)) {
    assert!(s.changed && !s.replaced, "{step}: {} {:?}", s.node, s.raw);
    assert_eq!(s.delta(), want, "{step}: {} sent {:?}", s.node, s.raw);
}

/// Prints the summaries of a step (the test's figures).
fn show(step: &str, summaries: &[ApplySummary]) {
    for s in summaries {
        eprintln!(
            "{step}: {} changed={} chains +{} ~{} -{} elements +{} -{} rules +{} ({} messages, {:.2} ms)",
            s.node,
            s.changed,
            s.chains_added,
            s.chains_refilled,
            s.chains_deleted,
            s.elements_added,
            s.elements_deleted,
            s.rules_added,
            s.messages,
            s.elapsed_ms
        );
    }
}

/// Rule handles per chain in `nft -a list` output.
fn rule_handles(listing: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut chain = None;
    for line in listing.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            out.entry(name.clone()).or_default();
            chain = Some(name);
        } else if t == "}" {
            chain = None;
        } else if let (Some(c), Some((_, h)), false) =
            (&chain, t.rsplit_once("# handle "), t.starts_with("type "))
        {
            out.entry(c.clone())
                .or_default()
                .push(h.trim().parse().unwrap_or(0));
        }
    }
    out
}

/// Chains that are new or whose rules were rewritten (their rule handles changed) between
/// two `nft -a list` outputs: what the kernel says an apply touched.
fn rewritten_chains(before: &str, after: &str) -> BTreeSet<String> {
    let (b, a) = (rule_handles(before), rule_handles(after));
    a.iter()
        .filter(|(name, handles)| b.get(*name) != Some(handles))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Applies on both nodes and returns the summaries and, per node, the chains the kernel shows
/// as new or rewritten.
fn step(
    fx: &Fixture,
    name: &str,
    objects: &Value,
    policies: &str,
) -> (Vec<ApplySummary>, Vec<BTreeSet<String>>) {
    let listing = |i| {
        fx.cluster
            .node(i)
            .netns
            .exec("nft", ["-a", "-s", "list", "table", "inet", "nftpol"])
            .unwrap()
            .stdout
    };
    let before = [listing(0), listing(1)];
    let s = fx.apply_objects(objects, policies);
    show(name, &s);
    let touched = (0..2)
        .map(|i| rewritten_chains(&before[i], &listing(i)))
        .collect();
    (s, touched)
}

fn chains(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[track_caller]
fn assert_unchanged(step: &str, s: &ApplySummary) {
    assert!(!s.changed, "{step}: {} sent something: {:?}", s.node, s.raw);
    assert_eq!(s.messages, 0, "{step}: {} {:?}", s.node, s.raw);
}

#[test]
fn changed_inputs_send_only_their_delta_and_unchanged_input_sends_nothing() {
    skip_unless_root!("changed_inputs_send_only_their_delta_and_unchanged_input_sends_nothing");
    let fx = Fixture::new("ap-delta");

    // 1. x/a accepts its friends (x/b) on TCP 80.
    let name = "1: first apply";
    let s = fx.apply_objects(&snapshot(&fx, &["x/b"]), &friends_policy(80));
    show(name, &s);
    assert!(
        s.iter().all(|s| s.changed && s.chains_added > 0),
        "{name}: {s:?}"
    );
    let mut allowed = Allowed {
        friends: &["x/b"],
        friends_port: Some(80),
        dns_from_blue: false,
    };
    check_traffic(&fx, name, &[], &allowed);

    // 2. The same input again: nothing to send.
    let name = "2: same input";
    for s in fx.apply_objects(&snapshot(&fx, &["x/b"]), &friends_policy(80)) {
        assert_unchanged(name, &s);
    }

    // 3. x/c gets the label and enters the selector: one element per family into x/a's
    // peer-port map on node-0, nothing else anywhere.
    let name = "3: x/c labelled role=friend";
    let (s, touched) = step(
        &fx,
        name,
        &snapshot(&fx, &["x/b", "x/c"]),
        &friends_policy(80),
    );
    assert_delta(name, &s[0], (0, 0, 0, 2, 0, 0));
    assert_eq!(
        touched,
        [chains(&[]), chains(&[])],
        "{name}: chains rewritten"
    );
    assert_unchanged(name, &s[1]);
    allowed.friends = &["x/b", "x/c"];
    check_traffic(&fx, name, &[], &allowed);

    // 4. A new pod x/d on node-1 with the label: node-0 adds x/a's two elements for it;
    // node-1 only learns its new local pod (one element per family in its set of known pod
    // addresses), no chain and no rule, since no policy selects x/d.
    let name = "4: new pod x/d (role=friend) on node-1";
    let xd = fx
        .cluster
        .add_pod(
            PodSpec::new("x", "d")
                .on(1)
                .label("pod", "d")
                .label("role", "friend"),
        )
        .unwrap();
    xd.serve_all(&[(Proto::Tcp, 80), (Proto::Tcp, 81), (Proto::Udp, 53)])
        .unwrap();
    let friends = ["x/b", "x/c", "x/d"];
    let (s, touched) = step(&fx, name, &snapshot(&fx, &friends), &friends_policy(80));
    assert_delta(name, &s[0], (0, 0, 0, 2, 0, 0));
    assert_delta(name, &s[1], (0, 0, 0, 2, 0, 0));
    assert_eq!(
        touched,
        [chains(&[]), chains(&[])],
        "{name}: chains rewritten"
    );
    allowed.friends = &friends;
    let extra = [xd.clone()];
    check_traffic(&fx, name, &extra, &allowed);

    // 5. The port changes from 80 to 81: the 3 friends x 2 families elements are swapped, the
    // chains stay as they are.
    let name = "5: port 80 -> 81";
    let (s, touched) = step(&fx, name, &snapshot(&fx, &friends), &friends_policy(81));
    assert_delta(name, &s[0], (0, 0, 0, 6, 6, 0));
    assert_eq!(
        touched,
        [chains(&[]), chains(&[])],
        "{name}: chains rewritten"
    );
    assert_unchanged(name, &s[1]);
    allowed.friends_port = Some(81);
    check_traffic(&fx, name, &extra, &allowed);

    // 6. A second policy: its rule chain (one rule) and the 3 y pods x 2 families elements.
    // x/a's own chain may be rewritten (its drop names the policies that isolate it); no other
    // chain is touched.
    let name = "6: policy dns-from-blue added";
    let both = format!("{}---{}", friends_policy(81), DNS_FROM_BLUE);
    let (s, touched) = step(&fx, name, &snapshot(&fx, &friends), &both);
    let n0 = &s[0];
    assert!(n0.changed && !n0.replaced, "{name}: {:?}", n0.raw);
    assert_eq!(
        (
            n0.chains_added,
            n0.chains_deleted,
            n0.elements_added,
            n0.elements_deleted
        ),
        (1, 0, 6, 0),
        "{name}: {:?}",
        n0.raw
    );
    let new_chain = "np_x_dns-from-blue_ingress_0";
    assert!(touched[0].contains(new_chain), "{name}: {:?}", touched[0]);
    assert!(
        touched[0].is_subset(&chains(&[new_chain, "ingress_x_a"])),
        "{name}: chains rewritten on node-0: {:?}",
        touched[0]
    );
    assert_eq!(
        n0.chains_refilled,
        touched[0].len() as u64 - 1,
        "{name}: {:?}",
        n0.raw
    );
    assert_unchanged(name, &s[1]);
    allowed.dns_from_blue = true;
    check_traffic(&fx, name, &extra, &allowed);

    // 7. The first policy goes: its chain and its 6 elements go; nothing is added but what a
    // rewrite of x/a's chain needs.
    let name = "7: policy allow-friends removed";
    let (s, touched) = step(&fx, name, &snapshot(&fx, &friends), DNS_FROM_BLUE);
    let n0 = &s[0];
    assert!(n0.changed && !n0.replaced, "{name}: {:?}", n0.raw);
    assert_eq!(
        (
            n0.chains_added,
            n0.chains_deleted,
            n0.elements_added,
            n0.elements_deleted
        ),
        (0, 1, 0, 6),
        "{name}: {:?}",
        n0.raw
    );
    assert!(
        touched[0].is_subset(&chains(&["ingress_x_a"])),
        "{name}: chains rewritten on node-0: {:?}",
        touched[0]
    );
    assert_eq!(
        n0.chains_refilled,
        touched[0].len() as u64,
        "{name}: {:?}",
        n0.raw
    );
    assert_unchanged(name, &s[1]);
    allowed.friends_port = None;
    check_traffic(&fx, name, &extra, &allowed);

    // 8. No policy left: x/a is no longer isolated. Only deletions: x/a's chain and the rule
    // chain; x/a's dispatch elements and isolated-set elements (one each per family), its 6
    // peer elements and its 2 "reaches itself" elements.
    let name = "8: no policy";
    let (s, touched) = step(&fx, name, &snapshot(&fx, &friends), "");
    assert_delta(name, &s[0], (0, 0, 2, 0, 2 + 2 + 6 + 2, 0));
    assert_eq!(
        touched,
        [chains(&[]), chains(&[])],
        "{name}: chains rewritten"
    );
    assert_unchanged(name, &s[1]);
    allowed.dns_from_blue = false;
    check_traffic(&fx, name, &extra, &allowed);

    // 9. And the same empty policy set again: nothing.
    for s in fx.apply_objects(&snapshot(&fx, &friends), "") {
        assert_unchanged("9: no policy again", &s);
    }
}

/// `nft -a -s list table inet nftpol` (handles, no counter values) in node `i`.
fn stateless(fx: &Fixture, i: usize) -> String {
    fx.cluster
        .node(i)
        .netns
        .nft(&["-a", "-s", "list", "table", "inet", "nftpol"])
        .unwrap()
        .stdout
}

/// Same as [`stateless`] without handles (a repaired chain gets new rule handles).
fn stateless_no_handles(fx: &Fixture, i: usize) -> String {
    fx.cluster
        .node(i)
        .netns
        .nft(&["-s", "list", "table", "inet", "nftpol"])
        .unwrap()
        .stdout
}

/// The number of rules of `chain` in an `nft list table` output.
fn chain_rule_count(listing: &str, chain: &str) -> u64 {
    let start = listing
        .find(&format!("chain {chain} {{"))
        .unwrap_or_else(|| panic!("no chain {chain} in\n{listing}"));
    let body = &listing[start..];
    let end = body.find("\n\t}").unwrap_or(body.len());
    body[..end]
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

#[test]
fn apply_repairs_exactly_a_flushed_chain_a_flushed_map_a_deleted_element_and_a_deleted_table() {
    skip_unless_root!(
        "apply_repairs_exactly_a_flushed_chain_a_flushed_map_a_deleted_element_and_a_deleted_table"
    );
    let fx = Fixture::new("ap-repair");
    let objs = snapshot(&fx, &["x/b"]);
    let policies = format!("{}---{}", friends_policy(80), DNS_FROM_BLUE);
    let dir = fx.input(&objs, &policies);
    let node0 = fx.cluster.node(0);
    let apply0 = || fx.nftpol.apply(node0, dir.path()).unwrap();
    assert!(apply0().changed);
    let good = stateless_no_handles(&fx, 0);
    let allowed = Allowed {
        friends: &["x/b"],
        friends_port: Some(80),
        dns_from_blue: true,
    };
    let everything = Allowed {
        friends: &[],
        friends_port: None,
        dns_from_blue: false,
    };
    check_traffic(&fx, "installed", &[], &allowed);

    // Someone flushes x/a's chain: x/a is open to everyone. The next apply puts back that
    // chain's rules (the chain is empty, so there is nothing to flush first) and sends nothing
    // else.
    let step = "flushed chain ingress_x_a";
    let chain_rules = chain_rule_count(&good, "ingress_x_a");
    assert!(chain_rules > 0, "{good}");
    node0
        .netns
        .nft(&["flush", "chain", "inet", "nftpol", "ingress_x_a"])
        .unwrap();
    check_traffic(&fx, &format!("{step} (damaged)"), &[], &everything);
    let s = apply0();
    assert!(s.changed && !s.replaced, "{step}: {:?}", s.raw);
    assert_eq!(
        (
            s.chains_added,
            s.chains_deleted,
            s.elements_added,
            s.elements_deleted,
            s.rules_added
        ),
        (0, 0, 0, 0, chain_rules),
        "{step}: {:?}",
        s.raw
    );
    assert!(s.chains_refilled <= 1, "{step}: {:?}", s.raw);
    assert_eq!(
        stateless_no_handles(&fx, 0),
        good,
        "{step}: repaired table differs"
    );
    check_traffic(&fx, &format!("{step} (repaired)"), &[], &allowed);

    // Someone flushes the IPv4 peer-port map: x/b's TCP 80 and y's three UDP 53 elements are
    // gone (IPv6 still works). The next apply re-adds exactly those 4 elements.
    let step = "flushed map ingress_peer_port_v4";
    let before = stateless(&fx, 0);
    node0
        .netns
        .nft(&["flush", "map", "inet", "nftpol", "ingress_peer_port_v4"])
        .unwrap();
    let s = apply0();
    assert_delta(step, &s, (0, 0, 0, 4, 0, 0));
    assert_eq!(stateless(&fx, 0), before, "{step}: repaired table differs");
    check_traffic(&fx, &format!("{step} (repaired)"), &[], &allowed);

    // Someone deletes one element (x/b -> x/a TCP 80 over IPv6): one element comes back.
    let step = "deleted one element";
    let before = stateless(&fx, 0);
    let key = format!(
        "{{ {} . {} . tcp . 80 }}",
        ip(&fx, "x/a", Family::V6),
        ip(&fx, "x/b", Family::V6)
    );
    node0
        .netns
        .nft(&[
            "delete",
            "element",
            "inet",
            "nftpol",
            "ingress_peer_port_v6",
            &key,
        ])
        .unwrap();
    let s = apply0();
    assert_delta(step, &s, (0, 0, 0, 1, 0, 0));
    assert_eq!(stateless(&fx, 0), before, "{step}: repaired table differs");

    // Someone deletes the whole table: everything is open until the next apply re-creates it
    // as it was.
    let step = "deleted table";
    node0
        .netns
        .nft(&["delete", "table", "inet", "nftpol"])
        .unwrap();
    assert!(list_table(node0).unwrap().is_none());
    check_traffic(&fx, &format!("{step} (damaged)"), &[], &everything);
    let s = apply0();
    assert!(
        s.changed && s.chains_added > 0 && s.elements_added > 0,
        "{step}: {:?}",
        s.raw
    );
    assert_eq!(
        stateless_no_handles(&fx, 0),
        good,
        "{step}: re-created table differs"
    );
    check_traffic(&fx, &format!("{step} (repaired)"), &[], &allowed);
    assert_unchanged("after the repairs", &apply0());
}

#[test]
fn invalid_cidr_fails_naming_file_object_and_field_and_leaves_the_kernel_table_untouched() {
    skip_unless_root!(
        "invalid_cidr_fails_naming_file_object_and_field_and_leaves_the_kernel_table_untouched"
    );
    let fx = Fixture::new("ap-bad-input");
    let objs = snapshot(&fx, &["x/b"]);
    let dir = fx.input(&objs, &friends_policy(80));
    let node0 = fx.cluster.node(0);
    let node1 = fx.cluster.node(1);
    // node-0 has a table, node-1 none yet.
    assert!(fx.nftpol.apply(node0, dir.path()).unwrap().changed);
    assert!(list_table(node1).unwrap().is_none());
    let before = stateless(&fx, 0);
    let before_counters = list_table(node0).unwrap().unwrap();

    // A valid new policy in one file (it would open x/a to y) and an invalid one in another:
    // nothing of either may reach the kernel.
    dir.write("good.yaml", DNS_FROM_BLUE).unwrap();
    let bad = dir
        .write(
            "bad.yaml",
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-cidr, namespace: x}
spec:
  podSelector:
    matchLabels: {pod: c}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/33
"#,
        )
        .unwrap();
    for node in [node0, node1] {
        let out = fx.nftpol.apply_output(node, dir.path()).unwrap();
        assert!(!out.success(), "apply with a bad CIDR succeeded:\n{out}");
        assert!(out.stdout.trim().is_empty(), "printed a summary:\n{out}");
        let msg = &out.stderr;
        for needle in [
            bad.display().to_string().as_str(),
            "NetworkPolicy x/bad-cidr",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "10.0.0.0/33",
        ] {
            assert!(
                msg.contains(needle),
                "the error does not name {needle:?}:\n{msg}"
            );
        }
    }
    // Byte for byte what it was (handles included: nothing was re-created), counters too.
    assert_eq!(stateless(&fx, 0), before);
    assert_eq!(list_table(node0).unwrap().unwrap(), before_counters);
    assert!(list_table(node1).unwrap().is_none(), "node-1 got a table");
    let allowed = Allowed {
        friends: &["x/b"],
        friends_port: Some(80),
        dns_from_blue: false,
    };
    check_traffic(&fx, "after the failed apply", &[], &allowed);

    // Fixed, the same directory applies, with the good policy's delta only.
    dir.remove("bad.yaml").unwrap();
    let s = fx.nftpol.apply(node0, dir.path()).unwrap();
    assert!(
        s.changed && !s.replaced && s.elements_added == 6,
        "{:?}",
        s.raw
    );
}
