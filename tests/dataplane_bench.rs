//! Full syncs of big tables through the real kernel, and the figures the architecture relies
//! on: how long a fresh load of 100k elements + 10k rules and of 1M elements + 100k rules
//! takes through netlink and through `nft -f` of the same text, and how long a dozen-message
//! incremental batch takes. Run in a network namespace the test creates and removes.
//!
//! The quick test runs by default; the heavy one and the figures are `#[ignore]`d:
//!
//! ```text
//! cargo test --release --test dataplane_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Address plan: local pods 10.0.0.0/16, peers 10.128.0.0/9, policy chains `np_<i>`.

#[path = "dataplane_netns/mod.rs"]
mod netns;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netns::Netns;
use nftpol::dataplane::{Dataplane, Netlink};
use nftpol::nft::diff::diff;
use nftpol::nft::model::*;
use nftpol::nft::text::render;
use nftpol::nft::transaction::Transaction;

fn accept_only() -> bool {
    std::env::var_os("NFTPOL_BENCH_ACCEPT").is_some()
}

fn pod(i: usize) -> KeyPart {
    KeyPart::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

fn peer(i: usize) -> KeyPart {
    KeyPart::V4(Ipv4Addr::from(0x0a80_0000u32 + i as u32))
}

/// A table shaped like nftpol's: `rules / 10` policy chains of ten rules each, a forward
/// chain dispatching through a verdict map of `elements` entries pointing at those chains.
fn big_table(elements: usize, rules: usize) -> Table {
    let mut t = Table::new("nftpol");
    let chains = (rules / 10).max(1);
    let names: Vec<Name> = (0..chains).map(|i| Name::from(format!("np_{i}"))).collect();
    for (c, name) in names.iter().enumerate() {
        let mut ch = Chain::regular(name.clone());
        for r in 0..10 {
            ch.rules.push(
                Rule::new(
                    vec![
                        Match::Cmp {
                            field: Field::IpSaddr,
                            negate: false,
                            value: peer(c * 10 + r),
                        },
                        Match::Cmp {
                            field: Field::L4Proto,
                            negate: false,
                            value: KeyPart::Proto(6),
                        },
                        Match::Cmp {
                            field: Field::ThDport,
                            negate: false,
                            value: KeyPart::Port(1000 + r as u16),
                        },
                    ],
                    Action::Verdict(Verdict::Accept),
                )
                .counted()
                .comment(format!("ns{c}/pol ingress rule {r}")),
            );
        }
        t.chains.insert(name.clone(), ch);
    }
    let mut m = Set::verdict_map(
        "ingress_peer_port_v4",
        vec![
            KeyType::Ipv4Addr,
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
        ],
    );
    for i in 0..elements {
        m.elements.insert(
            Key(vec![
                pod(i / 1000),
                peer(i % 1000),
                KeyPart::Proto(if i % 2 == 0 { 6 } else { 17 }),
                KeyPart::Port(80 + (i % 7) as u16),
            ]),
            // NFTPOL_BENCH_ACCEPT=1: plain accept verdicts, to separate the kernel's jump
            // validation cost from the rest.
            Some(if accept_only() {
                Verdict::Accept
            } else {
                Verdict::Goto(names[i % chains].clone())
            }),
        );
    }
    t.sets.insert(m.name.clone(), m);
    let mut f = Chain::base(
        "forward",
        BaseChain {
            hook: Hook::Forward,
            priority: 0,
            policy: ChainPolicy::Accept,
        },
    );
    f.rules.push(Rule::new(
        vec![Match::CtState(
            CtStates::ESTABLISHED.union(CtStates::RELATED),
        )],
        Action::Verdict(Verdict::Accept),
    ));
    f.rules.push(Rule::new(
        vec![],
        Action::VMap {
            key: vec![
                Field::IpDaddr,
                Field::IpSaddr,
                Field::L4Proto,
                Field::ThDport,
            ],
            map: "ingress_peer_port_v4".into(),
        },
    ));
    t.chains.insert(f.name.clone(), f);
    t
}

/// Loads `table` fresh through netlink; checks it reads back identical when `verify`.
fn load(dp: &mut Netlink, table: &Table, verify: bool) -> (Duration, usize, usize, Duration) {
    let tx = diff(None, table);
    let started = Instant::now();
    let report = dp.apply(&tx).expect("apply");
    let elapsed = started.elapsed();
    if verify {
        let back = dp.dump(&table.name).expect("dump").expect("table exists");
        assert!(back == *table, "table read back differs");
    }
    (elapsed, report.messages, report.bytes, report.build)
}

fn nft_load(ns: &Netns, table: &Table) -> Duration {
    let text = render(table);
    let path = std::env::temp_dir().join(format!("{}-bench.nft", ns.name));
    std::fs::write(&path, text).expect("write ruleset");
    let started = Instant::now();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f"])
        .arg(&path)
        .output()
        .expect("run nft");
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// Twelve messages: batch begin/end, a new chain with its rule, element deletes and adds in
/// the big map, a flushed and refilled chain.
fn incremental(table: &Table, round: usize) -> Transaction {
    let mut tx = Transaction::new(table.name.clone());
    let name: Name = format!("np_new_{round}").into();
    tx.add_chains.push(Chain::regular(name.clone()));
    tx.add_rules.push((
        name.clone(),
        vec![
            Rule::new(vec![], Action::Verdict(Verdict::Accept))
                .counted()
                .comment("new/pod ingress rule 0"),
        ],
    ));
    let key = |i: usize| {
        Key(vec![
            pod(60_000 + i),
            peer(round),
            KeyPart::Proto(6),
            KeyPart::Port(443),
        ])
    };
    tx.add_elements.insert(
        "ingress_peer_port_v4".into(),
        (0..4)
            .map(|i| (key(i), Some(Verdict::Goto(name.clone()))))
            .collect(),
    );
    tx.flush_chains.push("np_0".into());
    tx.add_rules.push((
        "np_0".into(),
        table.chains["np_0"].rules.iter().take(6).cloned().collect(),
    ));
    tx
}

#[test]
fn full_sync_of_20k_elements_and_2k_rules_round_trips() {
    let Some(_ns) = Netns::enter("full_sync_of_20k_elements_and_2k_rules_round_trips") else {
        return;
    };
    let mut dp = Netlink::new().expect("netlink");
    let t = big_table(20_000, 2_000);
    let (_, messages, _, _) = load(&mut dp, &t, true);
    assert!(
        messages > 20,
        "elements must span many messages: {messages}"
    );
    // and a replace of the whole thing in one batch
    let mut tx = diff(None, &t);
    tx.replace = true;
    dp.apply(&tx).expect("replace");
    assert_eq!(dp.dump("nftpol").expect("dump").as_ref(), Some(&t));
}

#[test]
#[ignore = "heavy: 1M map elements and 100k rules (about a minute and a few GiB)"]
fn full_sync_of_1m_elements_and_100k_rules() {
    let Some(_ns) = Netns::enter("full_sync_of_1m_elements_and_100k_rules") else {
        return;
    };
    let mut dp = Netlink::new().expect("netlink");
    let t = big_table(1_000_000, 100_000);
    let (elapsed, messages, bytes, build) = load(&mut dp, &t, false);
    let started = Instant::now();
    let back = dp.dump("nftpol").expect("dump").expect("table exists");
    let dump_time = started.elapsed();
    explain_difference(&back, &t);
    assert!(back == t, "table read back differs");
    eprintln!(
        "FIGURE 1M elements + 100k rules: apply {elapsed:?} ({messages} messages, {bytes} bytes, \
         batch built in {build:?}), dump {dump_time:?}"
    );
    // An identical desired table sends nothing.
    assert!(diff(Some(&back), &t).is_empty());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "figures: run in release mode with --nocapture"]
fn figures() {
    let Some(ns) = Netns::enter("figures") else {
        return;
    };
    let mut dp = Netlink::new().expect("netlink");
    let del = |ns: &Netns| {
        let _ = ns.try_run(&["nft", "delete", "table", "inet", "nftpol"]);
    };
    // NFTPOL_BENCH_ELEMENTS=n measures only an n-element, n/10-rule table.
    let sizes: Vec<(usize, usize, usize)> = match std::env::var("NFTPOL_BENCH_ELEMENTS") {
        Ok(n) => {
            let n: usize = n.parse().expect("NFTPOL_BENCH_ELEMENTS is a number");
            vec![(n, n / 10, 5)]
        }
        Err(_) => vec![(100_000, 10_000, 5), (1_000_000, 100_000, 2)],
    };
    for (elements, rules, runs) in sizes {
        let t = big_table(elements, rules);
        let started = Instant::now();
        let tx = diff(None, &t);
        let diff_time = started.elapsed();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let (mut msgs, mut bytes) = (0, 0);
        let mut builds = Vec::new();
        for _ in 0..runs {
            del(&ns);
            let (d, m, b, bt) = load(&mut dp, &t, false);
            ours.push(d);
            builds.push(bt);
            (msgs, bytes) = (m, b);
            del(&ns);
            theirs.push(nft_load(&ns, &t));
        }
        // the same table read back (the 1M case is measured by the heavy test)
        del(&ns);
        load(&mut dp, &t, false);
        let mut dump_time = Duration::ZERO;
        if elements <= 100_000 {
            let started = Instant::now();
            let back = dp.dump("nftpol").expect("dump");
            dump_time = started.elapsed();
            let back = back.expect("table exists");
            explain_difference(&back, &t);
            assert!(back == t);
        }
        eprintln!(
            "FIGURE fresh {elements} elements + {rules} rules: netlink {:?} (median of {runs}; \
             {msgs} messages, {:.1} MB, batch built in {:?}; diff() {diff_time:?}), nft -f {:?}, \
             dump {dump_time:?}",
            median(ours),
            bytes as f64 / 1e6,
            median(builds),
            median(theirs)
        );
        let _ = tx;
        // incremental batches against the big table
        if elements <= 100_000 {
            let mut times = Vec::new();
            let mut messages = 0;
            for round in 0..9 {
                let tx = incremental(&t, round);
                let started = Instant::now();
                let rep = dp.apply(&tx).expect("incremental");
                times.push(started.elapsed());
                messages = rep.messages;
            }
            eprintln!(
                "FIGURE incremental batch of {messages} messages into the {elements}-element table: {:?} (median of 9)",
                median(times)
            );
            // What the incremental cost is made of.
            let mut only_elements = Vec::new();
            let mut only_rules = Vec::new();
            for round in 0..9 {
                let mut tx = Transaction::new(t.name.clone());
                tx.add_elements.insert(
                    "ingress_peer_port_v4".into(),
                    (0..4)
                        .map(|i| {
                            (
                                Key(vec![
                                    pod(50_000 + i),
                                    peer(round),
                                    KeyPart::Proto(17),
                                    KeyPart::Port(53),
                                ]),
                                Some(Verdict::Goto("np_1".into())),
                            )
                        })
                        .collect(),
                );
                let started = Instant::now();
                dp.apply(&tx).expect("elements");
                only_elements.push(started.elapsed());
                let mut tx = Transaction::new(t.name.clone());
                tx.flush_chains.push("np_2".into());
                tx.add_rules
                    .push(("np_2".into(), t.chains["np_2"].rules.clone()));
                let started = Instant::now();
                dp.apply(&tx).expect("rules");
                only_rules.push(started.elapsed());
            }
            eprintln!(
                "FIGURE   of which: 4 goto map elements alone {:?}, refilling one 10-rule chain alone {:?}",
                median(only_elements),
                median(only_rules)
            );
        }
        del(&ns);
    }
}

/// Prints where two tables differ (assert_eq! would print a million elements).
fn explain_difference(got: &Table, want: &Table) {
    for (n, s) in &want.sets {
        match got.sets.get(n) {
            None => eprintln!("set {n} missing"),
            Some(g) if g != s => {
                eprintln!(
                    "set {n}: {} elements, want {}",
                    g.elements.len(),
                    s.elements.len()
                );
                if let Some((k, v)) = s
                    .elements
                    .iter()
                    .find(|(k, v)| g.elements.get(*k) != Some(v))
                {
                    eprintln!("  e.g. {k:?} -> {v:?} is {:?}", g.elements.get(k));
                }
            }
            _ => {}
        }
    }
    for (n, c) in &want.chains {
        match got.chains.get(n) {
            None => eprintln!("chain {n} missing"),
            Some(g) if g != c => eprintln!("chain {n}: {:?}\n  want {:?}", g, c),
            _ => {}
        }
    }
    if got.chains.len() != want.chains.len() || got.sets.len() != want.sets.len() {
        eprintln!(
            "{} chains, {} sets; want {} and {}",
            got.chains.len(),
            got.sets.len(),
            want.chains.len(),
            want.sets.len()
        );
    }
}

#[test]
#[ignore = "stress: repeated loads and dumps of a 100k-element table"]
fn repeated_dumps_agree() {
    let Some(ns) = Netns::enter("repeated_dumps_agree") else {
        return;
    };
    let mut dp = Netlink::new().expect("netlink");
    let t = big_table(100_000, 10_000);
    for round in 0..6 {
        let _ = ns.try_run(&["nft", "delete", "table", "inet", "nftpol"]);
        load(&mut dp, &t, false);
        if round % 2 == 1 {
            let _ = ns.try_run(&["nft", "delete", "table", "inet", "nftpol"]);
            nft_load(&ns, &t);
        }
        let back = dp.dump("nftpol").expect("dump").expect("table exists");
        explain_difference(&back, &t);
        assert!(back == t, "round {round}");
    }
}
