//! Property-style tests of `nft::diff`: for random pairs of valid tables, applying
//! `diff(current, desired)` to `current` gives `desired`, with the in-memory semantics
//! (`apply_to`, hundreds of pairs) and with the real kernel (a few pairs, in a network
//! namespace the test creates and removes).
//!
//! Address plan: local pods 10.0.0.0/29, peers 10.1.0.0/27, ipBlocks 192.168.0.0/20 in /24s,
//! single blocked addresses 172.16.0.0/28.

#[path = "dataplane_netns/mod.rs"]
mod netns;

use nftpol::dataplane::{Dataplane, Netlink};
use nftpol::nft::diff::{apply_to, diff, validate_table};
use nftpol::nft::model::*;
use nftpol::nft::text::render;

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> KeyPart {
    KeyPart::V4(std::net::Ipv4Addr::new(a, b, c, d))
}

/// A random table in the shape nftpol generates: a forward chain dispatching through a
/// verdict map to policy rule chains, a peer set, an interval set of ipBlocks.
fn random_table(seed: u64) -> Table {
    let mut r = Rng::new(seed);
    let mut t = Table::new("nftpol");
    let chains: Vec<String> = (0..6)
        .filter(|_| r.chance(70))
        .map(|i| format!("np_ns{i}_pol_ingress_0"))
        .collect();
    for c in &chains {
        let mut ch = Chain::regular(c.as_str());
        let mut rule = Rule::new(vec![], Action::Verdict(Verdict::Accept)).counted();
        if r.chance(50) {
            rule = rule.comment(format!("ns/pol ingress rule {}", r.below(3)));
        }
        ch.rules.push(rule);
        if r.chance(20) {
            ch.rules.push(Rule::new(
                vec![Match::Cmp {
                    field: Field::L4Proto,
                    negate: false,
                    value: KeyPart::Proto(6),
                }],
                Action::Verdict(Verdict::Drop),
            ));
        }
        t.chains.insert(ch.name.clone(), ch);
    }
    let verdict = |r: &mut Rng| -> Verdict {
        if chains.is_empty() || r.chance(10) {
            Verdict::Accept
        } else {
            let c = chains[r.below(chains.len())].as_str();
            if r.chance(80) {
                Verdict::Goto(c.into())
            } else {
                Verdict::Jump(c.into())
            }
        }
    };
    let mut m = Set::verdict_map(
        "ingress_peer_port_v4",
        vec![
            KeyType::Ipv4Addr,
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
        ],
    );
    for _ in 0..r.below(40) {
        let key = Key(vec![
            ip(10, 0, 0, r.below(8) as u8),
            ip(10, 1, 0, r.below(32) as u8),
            KeyPart::Proto(if r.chance(70) { 6 } else { 17 }),
            KeyPart::Port([53u16, 80, 443, 8080][r.below(4)]),
        ]);
        let v = verdict(&mut r);
        m.elements.insert(key, Some(v));
    }
    t.sets.insert(m.name.clone(), m);
    let has_peers = r.chance(80);
    if has_peers {
        let mut s = Set::new("peers_abc_v4", vec![KeyType::Ipv4Addr]);
        if r.chance(15) {
            s = s.with_comment("ns/app=db");
        }
        for i in 0..32u8 {
            if r.chance(40) {
                s.elements.insert(Key(vec![ip(10, 1, 0, i)]), None);
            }
        }
        t.sets.insert(s.name.clone(), s);
    }
    let mut cidrs = Set::verdict_map("ingress_cidr_v4", vec![KeyType::Ipv4Addr]).with_interval();
    for i in 0..16u8 {
        if r.chance(30) {
            let key = Key(vec![KeyPart::V4Range(
                std::net::Ipv4Addr::new(192, 168, i, 0),
                std::net::Ipv4Addr::new(192, 168, i, 255),
            )]);
            let v = verdict(&mut r);
            cidrs.elements.insert(key, Some(v));
        }
    }
    for i in 0..16u8 {
        if r.chance(20) {
            let v = verdict(&mut r);
            cidrs.elements.insert(Key(vec![ip(172, 16, 0, i)]), Some(v));
        }
    }
    t.sets.insert(cidrs.name.clone(), cidrs);

    let policy = if r.chance(10) {
        ChainPolicy::Drop
    } else {
        ChainPolicy::Accept
    };
    let mut fwd = Chain::base(
        "forward",
        BaseChain {
            hook: Hook::Forward,
            priority: 0,
            policy,
        },
    );
    fwd.rules.push(Rule::new(
        vec![Match::CtState(
            CtStates::ESTABLISHED.union(CtStates::RELATED),
        )],
        Action::Verdict(Verdict::Accept),
    ));
    if has_peers && !chains.is_empty() && r.chance(70) {
        fwd.rules.push(Rule::new(
            vec![
                Match::Lookup {
                    key: vec![Field::IpSaddr],
                    set: SetRef::Named("peers_abc_v4".into()),
                    negate: false,
                },
                Match::Lookup {
                    key: vec![Field::L4Proto, Field::ThDport],
                    set: SetRef::Anonymous(AnonSet {
                        interval: false,
                        elements: vec![
                            Key(vec![KeyPart::Proto(6), KeyPart::Port(5432)]),
                            Key(vec![KeyPart::Proto(17), KeyPart::Port(53)]),
                        ],
                    }),
                    negate: false,
                },
            ],
            Action::Verdict(Verdict::Goto(chains[r.below(chains.len())].as_str().into())),
        ));
    }
    fwd.rules.push(Rule::new(
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
    fwd.rules.push(Rule::new(
        vec![],
        Action::VMap {
            key: vec![Field::IpSaddr],
            map: "ingress_cidr_v4".into(),
        },
    ));
    t.chains.insert(fwd.name.clone(), fwd);
    t
}

#[test]
fn generated_tables_are_valid_and_varied() {
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..200 {
        let t = random_table(seed);
        if let Err(e) = validate_table(&t) {
            panic!("seed {seed}: {e}");
        }
        distinct.insert(render(&t));
    }
    assert!(distinct.len() > 190, "generator too repetitive");
}

#[test]
fn applying_the_diff_gives_the_desired_table() {
    let (mut replaced, mut incremental) = (0, 0);
    for seed in 0..400u64 {
        let current = random_table(seed);
        let desired = random_table(seed.wrapping_mul(7919) + 1);
        let tx = diff(Some(&current), &desired);
        if tx.replace {
            replaced += 1;
        } else {
            incremental += 1;
        }
        let mut live = Some(current.clone());
        if let Err(e) = apply_to(&mut live, &tx) {
            panic!("seed {seed}: {e}\n{tx:#?}");
        }
        assert_eq!(live.as_ref(), Some(&desired), "seed {seed}");
        assert!(diff(Some(&desired), &desired).is_empty(), "seed {seed}");
        // from nothing
        let mut fresh = None;
        apply_to(&mut fresh, &diff(None, &desired)).unwrap();
        assert_eq!(fresh.as_ref(), Some(&desired), "seed {seed} from nothing");
    }
    assert!(
        replaced > 10 && incremental > 100,
        "{replaced} replaced, {incremental} incremental"
    );
}

#[test]
fn small_changes_give_small_transactions() {
    let current = random_table(3);
    let mut desired = current.clone();
    let m = desired.sets.get_mut("ingress_peer_port_v4").unwrap();
    m.elements.insert(
        Key(vec![
            ip(10, 0, 0, 7),
            ip(10, 1, 0, 99),
            KeyPart::Proto(6),
            KeyPart::Port(9999),
        ]),
        Some(Verdict::Accept),
    );
    let tx = diff(Some(&current), &desired);
    let s = tx.stats();
    assert_eq!(
        (
            s.elements_added,
            s.elements_deleted,
            s.rules_added,
            s.chains_flushed
        ),
        (1, 0, 0, 0)
    );
    assert!(!tx.replace && !tx.create_table);
}

/// Keeps only the lines of a listing that are objects' contents, with objects sorted: after
/// incremental changes the kernel lists objects in creation order, `render` by name.
fn objects(listing: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in listing.lines().skip(1) {
        if line.is_empty() || line == "}" {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let line = strip_counters(line);
        // join wrapped element lists, then sort elements
        if line.starts_with("\t\t\t     ") {
            cur.push(' ');
            cur.push_str(line.trim_start());
        } else {
            if !cur.is_empty() {
                cur.push('\n');
            }
            cur.push_str(&line);
        }
    }
    let mut out: Vec<String> = blocks
        .into_iter()
        .map(|b| b.lines().map(sort_braces).collect::<Vec<_>>().join("\n"))
        .collect();
    out.sort();
    out
}

/// Sorts the items of every `{ a, b, c }` on a line (set elements, anonymous sets).
fn sort_braces(line: &str) -> String {
    let mut result = String::new();
    let mut rest = line;
    while let Some(open) = rest.find("{ ") {
        let Some(close) = rest[open..].find(" }") else {
            break;
        };
        let mut items: Vec<&str> = rest[open + 2..open + close].split(", ").collect();
        items.sort();
        result.push_str(&rest[..open + 2]);
        result.push_str(&items.join(", "));
        rest = &rest[open + close..];
    }
    result.push_str(rest);
    result
}

fn strip_counters(line: &str) -> String {
    let mut out = line.to_string();
    while let Some(p) = out.find("counter packets ") {
        let rest = &out[p + 16..];
        let end = rest
            .find("bytes ")
            .map(|b| b + 6)
            .and_then(|b| {
                rest[b..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map(|e| b + e)
                    .or(Some(rest.len()))
            })
            .unwrap_or(0);
        out = format!("{}counter{}", &out[..p], &rest[end..]);
    }
    out
}

#[test]
fn kernel_converges_on_random_pairs() {
    let Some(ns) = netns::Netns::enter("kernel_converges_on_random_pairs") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    let mut live = None;
    let (mut replaced, mut incremental) = (0, 0);
    for seed in [11u64, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22] {
        let desired = random_table(seed);
        let tx = diff(live.as_ref(), &desired);
        if live.is_some() {
            if tx.replace {
                replaced += 1;
            } else {
                incremental += 1;
            }
        }
        dp.apply(&tx).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        live = dp.dump("nftpol").unwrap();
        assert_eq!(
            live.as_ref(),
            Some(&desired),
            "seed {seed}: dump after diff"
        );
        let listed = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
        assert_eq!(
            objects(&listed),
            objects(&render(&desired)),
            "seed {seed}: listing"
        );
        assert!(diff(live.as_ref(), &desired).is_empty());
    }
    assert!(
        replaced > 0 && incremental > 0,
        "{replaced} replaced, {incremental} incremental"
    );
}

#[test]
fn fake_records_only_the_delta() {
    use nftpol::dataplane::Fake;
    let current = random_table(5);
    let mut fake = Fake::with_table(current.clone());
    let mut desired = current.clone();
    desired
        .sets
        .get_mut("ingress_peer_port_v4")
        .unwrap()
        .elements
        .insert(
            Key(vec![
                ip(10, 0, 0, 7),
                ip(10, 1, 0, 99),
                KeyPart::Proto(17),
                KeyPart::Port(53),
            ]),
            Some(Verdict::Drop),
        );
    let live = fake.dump("nftpol").unwrap();
    let report = fake.apply(&diff(live.as_ref(), &desired)).unwrap();
    // batch begin, one element message, batch end
    assert_eq!(report.messages, 3);
    assert_eq!(fake.applied().len(), 1);
    assert_eq!(fake.applied()[0].stats().elements_added, 1);
    assert_eq!(fake.table("nftpol"), Some(&desired));
    let again = fake.dump("nftpol").unwrap();
    let report = fake.apply(&diff(again.as_ref(), &desired)).unwrap();
    assert_eq!(report.messages, 0);
    assert_eq!(fake.applied().len(), 1, "an empty transaction is not sent");
}
