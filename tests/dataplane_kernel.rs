//! The dataplane against a real kernel: every test runs in a network namespace it creates and
//! always removes, so the host's ruleset is never touched. Without root the tests are skipped
//! with a loud message.
//!
//! Address plan: local pods 10.0.0.0/24 and fd00::/64, peers 10.1.0.0/16, ipBlocks 192.0.2.0/24.

#[path = "dataplane_netns/mod.rs"]
mod netns;

use netns::Netns;
use nftpol::dataplane::{Dataplane, Netlink};
use nftpol::nft::diff::diff;
use nftpol::nft::model::*;
use nftpol::nft::text::render;

#[test]
fn every_variant_is_valid() {
    nftpol::nft::diff::validate_table(&every_variant()).unwrap();
}

/// Applies the fixture through netlink into one namespace and loads its rendered text with
/// `nft -f` into another: both must list as `render()` prints (modulo the documented
/// differences), `dump()` must give back the model, and the bytecode must be nft's.
#[test]
fn netlink_and_nft_agree_on_every_variant() {
    let table = every_variant();
    let text = render(&table);
    let ours = {
        let Some(ns) = Netns::enter("netlink_and_nft_agree_on_every_variant") else {
            return;
        };
        ns.run(&[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        let mut dp = Netlink::new().unwrap();
        dp.apply(&diff(None, &table)).unwrap();
        let listed = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
        let bytecode = ns.run(&["nft", "--debug=netlink", "list", "table", "inet", "nftpol"]);
        let back = dp.dump("nftpol").unwrap().expect("table exists");
        for (name, set) in &table.sets {
            assert_eq!(back.sets.get(name), Some(set), "set {name} read back");
        }
        for (name, chain) in &table.chains {
            let got = back.chains.get(name).expect("chain read back");
            for (i, (a, b)) in chain.rules.iter().zip(&got.rules).enumerate() {
                assert_eq!(b, a, "chain {name} rule {i} read back");
            }
            assert_eq!(got, chain, "chain {name} read back");
        }
        assert_eq!(back, table);
        (listed, bytecode)
    };
    let Some(ns) = Netns::enter("netlink_and_nft_agree_on_every_variant (nft -f)") else {
        return;
    };
    ns.run(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.nft_load(&text).unwrap();
    let nft_listed = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
    let nft_bytecode = ns.run(&["nft", "--debug=netlink", "list", "table", "inet", "nftpol"]);
    assert_eq!(
        normalise(&ours.0),
        normalise(&text),
        "netlink-applied listing vs render"
    );
    assert_eq!(
        normalise(&nft_listed),
        normalise(&text),
        "nft -f listing vs render"
    );
    let (a, b) = (bytecode_lines(&ours.1), bytecode_lines(&nft_bytecode));
    if std::env::var_os("NFTPOL_DUMP_BYTECODE").is_some() {
        let _ = std::fs::write("/tmp/ours.txt", a.join("\n"));
        let _ = std::fs::write("/tmp/theirs.txt", b.join("\n"));
    }
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "bytecode differs");
    }
    assert_eq!(a.len(), b.len(), "bytecode line count");
}

/// `nft --debug=netlink list` output with the elements of each set sorted (hash sets list
/// in hash order) and the listing text itself left out.
fn bytecode_lines(s: &str) -> Vec<String> {
    // nft also sends an interval end element at zero ahead of a single-field interval set
    // whose first range starts above zero; nftpol does not (it changes nothing in what the
    // kernel matches), so those lines are dropped.
    let mut out: Vec<String> = Vec::new();
    let mut elements: Vec<String> = Vec::new();
    let flush = |out: &mut Vec<String>, elements: &mut Vec<String>| {
        elements.sort();
        out.append(elements);
    };
    for l in s.lines().take_while(|l| !l.starts_with("table ")) {
        let l = l.trim_end();
        if l.trim().is_empty() {
            continue;
        }
        if l.trim_start().starts_with("element ") {
            let e = l.trim().to_string();
            let key = e
                .trim_start_matches("element ")
                .split("  ")
                .next()
                .unwrap_or("");
            let zero_end = key.chars().all(|c| c == '0' || c == ' ') && e.ends_with(": 1 [end]");
            if !zero_end {
                elements.push(e);
            }
        } else {
            flush(&mut out, &mut elements);
            out.push(l.to_string());
        }
    }
    flush(&mut out, &mut elements);
    out
}

// ---------------------------------------------------------------------------------------------
// fixtures

fn v4(s: &str) -> KeyPart {
    KeyPart::V4(s.parse().unwrap())
}
fn v4r(a: &str, b: &str) -> KeyPart {
    KeyPart::V4Range(a.parse().unwrap(), b.parse().unwrap())
}
fn v6(s: &str) -> KeyPart {
    KeyPart::V6(s.parse().unwrap())
}
fn v6r(a: &str, b: &str) -> KeyPart {
    KeyPart::V6Range(a.parse().unwrap(), b.parse().unwrap())
}
fn k(parts: Vec<KeyPart>) -> Key {
    Key(parts)
}
fn cmp(field: Field, value: KeyPart) -> Match {
    Match::Cmp {
        field,
        negate: false,
        value,
    }
}
fn ncmp(field: Field, value: KeyPart) -> Match {
    Match::Cmp {
        field,
        negate: true,
        value,
    }
}
fn lookup(key: Vec<Field>, set: &str) -> Match {
    Match::Lookup {
        key,
        set: SetRef::Named(set.into()),
        negate: false,
    }
}
fn anon(key: Vec<Field>, mut elements: Vec<Key>) -> Match {
    elements.sort();
    let interval = elements.iter().any(|e| {
        e.0.iter().any(|p| {
            matches!(
                p,
                KeyPart::V4Range(..) | KeyPart::V6Range(..) | KeyPart::PortRange(..)
            )
        })
    });
    Match::Lookup {
        key,
        set: SetRef::Anonymous(AnonSet { interval, elements }),
        negate: false,
    }
}
fn accept() -> Action {
    Action::Verdict(Verdict::Accept)
}
fn goto(c: &str) -> Option<Verdict> {
    Some(Verdict::Goto(c.into()))
}
fn base(name: &str, hook: Hook, priority: i32, policy: ChainPolicy) -> Chain {
    Chain::base(
        name,
        BaseChain {
            hook,
            priority,
            policy,
        },
    )
}

/// A table that uses every variant of the model at least once.
fn every_variant() -> Table {
    use KeyType as T;
    let mut t = Table::new("nftpol");
    let mut add = |s: Set| {
        t.sets.insert(s.name.clone(), s);
    };
    let mut s = Set::new("s4", vec![T::Ipv4Addr]).with_comment("default/app=web peers");
    for a in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
        s.elements.insert(k(vec![v4(a)]), None);
    }
    add(s);
    let mut s = Set::new("s6", vec![T::Ipv6Addr]).with_interval();
    s.elements
        .insert(k(vec![v6r("fd00::", "fd00::ffff:ffff:ffff:ffff")]), None);
    s.elements.insert(k(vec![v6r("fd01::1", "fd01::5")]), None);
    s.elements.insert(k(vec![v6("::ffff:1.2.3.4")]), None);
    s.elements.insert(
        k(vec![v6r(
            "ffff::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        )]),
        None,
    );
    add(s);
    let mut s = Set::new("ifs", vec![T::Ifname]);
    s.elements
        .insert(k(vec![KeyPart::Ifname("veth0".into())]), None);
    s.elements
        .insert(k(vec![KeyPart::Ifname("eth1".into())]), None);
    add(s);
    let mut s = Set::verdict_map(
        "m4",
        vec![T::Ipv4Addr, T::Ipv4Addr, T::InetProto, T::InetService],
    )
    .with_interval()
    .with_comment("ingress cidr ports");
    s.elements.insert(
        k(vec![
            v4("10.0.0.1"),
            v4r("10.1.0.0", "10.1.255.255"),
            KeyPart::Proto(6),
            KeyPart::PortRange(80, 90),
        ]),
        goto("np_a"),
    );
    s.elements.insert(
        k(vec![
            v4("10.0.0.1"),
            v4r("0.0.0.0", "255.255.255.255"),
            KeyPart::Proto(17),
            KeyPart::Port(53),
        ]),
        Some(Verdict::Accept),
    );
    s.elements.insert(
        k(vec![
            v4("10.0.0.2"),
            v4r("192.0.2.0", "192.0.2.127"),
            KeyPart::Proto(132),
            KeyPart::PortRange(1, 65535),
        ]),
        Some(Verdict::Jump("np_b".into())),
    );
    s.elements.insert(
        k(vec![
            v4("10.0.0.3"),
            v4("192.0.2.200"),
            KeyPart::Proto(6),
            KeyPart::Port(443),
        ]),
        Some(Verdict::Drop),
    );
    add(s);
    let mut s = Set::verdict_map(
        "h6",
        vec![T::Ipv6Addr, T::Ipv6Addr, T::InetProto, T::InetService],
    );
    s.elements.insert(
        k(vec![
            v6("fd00::1"),
            v6("fd00::2"),
            KeyPart::Proto(6),
            KeyPart::Port(80),
        ]),
        goto("np_a"),
    );
    s.elements.insert(
        k(vec![
            v6("fd00::1"),
            v6("fd00::3"),
            KeyPart::Proto(17),
            KeyPart::Port(53),
        ]),
        Some(Verdict::Return),
    );
    add(s);
    let mut s = Set::verdict_map("v4", vec![T::Ipv4Addr]);
    s.elements.insert(k(vec![v4("10.0.0.1")]), goto("np_a"));
    s.elements
        .insert(k(vec![v4("10.0.0.2")]), Some(Verdict::Drop));
    add(s);
    let mut s = Set::verdict_map("i4", vec![T::Ipv4Addr]).with_interval();
    s.elements
        .insert(k(vec![v4r("10.0.0.0", "10.255.255.255")]), goto("np_a"));
    s.elements.insert(
        k(vec![v4r("192.168.0.1", "192.168.0.9")]),
        Some(Verdict::Drop),
    );
    s.elements
        .insert(k(vec![v4("11.0.0.1")]), Some(Verdict::Accept));
    s.elements.insert(
        k(vec![v4r("255.0.0.0", "255.255.255.255")]),
        Some(Verdict::Accept),
    );
    add(s);
    let mut s = Set::new("pp", vec![T::InetProto, T::InetService]);
    s.elements
        .insert(k(vec![KeyPart::Proto(6), KeyPart::Port(80)]), None);
    s.elements
        .insert(k(vec![KeyPart::Proto(17), KeyPart::Port(53)]), None);
    add(s);
    let mut s = Set::new("pi", vec![T::InetProto, T::InetService]).with_interval();
    s.elements.insert(
        k(vec![KeyPart::Proto(6), KeyPart::PortRange(8000, 8080)]),
        None,
    );
    add(s);
    let mut s = Set::new("nf", vec![T::NfProto]);
    s.elements.insert(k(vec![KeyPart::NfProto(2)]), None);
    add(s);
    let mut s = Set::new("it", vec![T::Icmpv6Type]);
    s.elements.insert(k(vec![KeyPart::Icmpv6Type(1)]), None);
    s.elements.insert(k(vec![KeyPart::Icmpv6Type(133)]), None);
    add(s);
    let mut s = Set::new("ports", vec![T::InetService]).with_interval();
    s.elements.insert(k(vec![KeyPart::Port(22)]), None);
    s.elements
        .insert(k(vec![KeyPart::PortRange(1000, 2000)]), None);
    s.elements
        .insert(k(vec![KeyPart::PortRange(65000, 65535)]), None);
    add(s);
    let mut s = Set::new("protos", vec![T::InetProto]);
    s.elements.insert(k(vec![KeyPart::Proto(6)]), None);
    s.elements.insert(k(vec![KeyPart::Proto(200)]), None);
    add(s);
    add(Set::new("empty", vec![T::Ipv4Addr, T::InetService]));
    let mut s = Set::verdict_map("vp", vec![T::InetService]);
    s.elements
        .insert(k(vec![KeyPart::Port(53)]), Some(Verdict::Accept));
    add(s);

    let mut chain = |c: Chain| {
        t.chains.insert(c.name.clone(), c);
    };
    let mut a = Chain::regular("np_a");
    a.rules.push(
        Rule::new(vec![], accept())
            .counted()
            .comment("default/allow-web ingress rule 0"),
    );
    chain(a);
    let mut b = Chain::regular("np_b");
    b.rules
        .push(Rule::new(vec![], Action::Verdict(Verdict::Return)).counted());
    chain(b);
    let mut f = base("forward", Hook::Forward, 0, ChainPolicy::Accept);
    let r = |m: Vec<Match>, a: Action| Rule::new(m, a);
    let nd = vec![
        k(vec![KeyPart::Icmpv6Type(133)]),
        k(vec![KeyPart::Icmpv6Type(134)]),
        k(vec![KeyPart::Icmpv6Type(135)]),
        k(vec![KeyPart::Icmpv6Type(136)]),
    ];
    f.rules = vec![
        r(
            vec![Match::CtState(
                CtStates::ESTABLISHED.union(CtStates::RELATED),
            )],
            accept(),
        ),
        r(
            vec![
                Match::CtState(CtStates::ESTABLISHED.union(CtStates::RELATED)),
                Match::TcpFlags {
                    mask: tcp_flags::SYN | tcp_flags::ACK,
                    value: tcp_flags::SYN,
                    negate: true,
                },
            ],
            accept(),
        ),
        r(
            vec![
                Match::TcpFlags {
                    mask: tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::ACK,
                    value: tcp_flags::SYN | tcp_flags::ACK,
                    negate: false,
                },
                cmp(Field::IpDaddr, v4("10.0.0.1")),
            ],
            Action::Verdict(Verdict::Drop),
        ),
        r(
            vec![
                Match::CtState(CtStates::ESTABLISHED),
                ncmp(Field::L4Proto, KeyPart::Proto(6)),
            ],
            accept(),
        ),
        r(
            vec![Match::CtState(CtStates::INVALID)],
            Action::Verdict(Verdict::Drop),
        ),
        r(vec![anon(vec![Field::Icmpv6Type], nd)], accept()),
        r(
            vec![],
            Action::VMap {
                key: vec![Field::IpSaddr],
                map: "v4".into(),
            },
        ),
        r(
            vec![],
            Action::VMap {
                key: vec![Field::IpDaddr],
                map: "i4".into(),
            },
        ),
        r(
            vec![],
            Action::VMap {
                key: vec![
                    Field::IpDaddr,
                    Field::IpSaddr,
                    Field::L4Proto,
                    Field::ThDport,
                ],
                map: "m4".into(),
            },
        ),
        r(
            vec![],
            Action::VMap {
                key: vec![
                    Field::Ip6Daddr,
                    Field::Ip6Saddr,
                    Field::L4Proto,
                    Field::ThDport,
                ],
                map: "h6".into(),
            },
        ),
        r(
            vec![
                lookup(vec![Field::IpSaddr], "s4"),
                anon(
                    vec![Field::L4Proto, Field::ThDport],
                    vec![
                        k(vec![KeyPart::Proto(6), KeyPart::Port(80)]),
                        k(vec![KeyPart::Proto(17), KeyPart::Port(53)]),
                    ],
                ),
            ],
            Action::Verdict(Verdict::Goto("np_a".into())),
        ),
        r(
            vec![Match::Lookup {
                key: vec![Field::IpSaddr],
                set: SetRef::Named("s4".into()),
                negate: true,
            }],
            Action::Verdict(Verdict::Drop),
        ),
        r(
            vec![lookup(vec![Field::Ip6Saddr], "s6")],
            Action::Verdict(Verdict::Return),
        ),
        r(
            vec![anon(
                vec![Field::L4Proto, Field::ThDport],
                vec![
                    k(vec![KeyPart::Proto(6), KeyPart::PortRange(80, 90)]),
                    k(vec![KeyPart::Proto(17), KeyPart::Port(53)]),
                ],
            )],
            Action::Verdict(Verdict::Jump("np_b".into())),
        ),
        r(
            vec![anon(
                vec![Field::IpSaddr, Field::L4Proto, Field::ThDport],
                vec![
                    k(vec![
                        v4r("192.0.2.0", "192.0.2.255"),
                        KeyPart::Proto(6),
                        KeyPart::PortRange(80, 90),
                    ]),
                    k(vec![
                        v4("198.51.100.1"),
                        KeyPart::Proto(17),
                        KeyPart::Port(53),
                    ]),
                ],
            )],
            accept(),
        ),
        r(vec![cmp(Field::IpSaddr, v4("10.0.0.1"))], Action::Continue).counted(),
        r(
            vec![
                ncmp(Field::IpSaddr, v4("10.0.0.1")),
                cmp(Field::IpDaddr, v4("10.0.0.2")),
            ],
            Action::Continue,
        )
        .counted(),
        r(
            vec![cmp(Field::IpSaddr, v4r("10.0.0.0", "10.255.255.255"))],
            accept(),
        ),
        r(
            vec![ncmp(Field::IpSaddr, v4r("10.16.0.0", "10.31.255.255"))],
            accept(),
        ),
        r(
            vec![cmp(Field::IpSaddr, v4r("0.0.0.0", "255.255.255.255"))],
            accept(),
        ),
        r(
            vec![cmp(Field::IpSaddr, v4r("10.0.0.1", "10.0.0.5"))],
            accept(),
        ),
        r(
            vec![ncmp(Field::IpDaddr, v4r("10.0.0.1", "10.0.0.5"))],
            accept(),
        ),
        r(vec![cmp(Field::Ip6Daddr, v6("fd00::1"))], accept()),
        r(
            vec![cmp(
                Field::Ip6Saddr,
                v6r("fd00::", "fd00::ffff:ffff:ffff:ffff"),
            )],
            accept(),
        ),
        r(
            vec![ncmp(
                Field::Ip6Saddr,
                v6r("fd00::", "fd00::1:ffff:ffff:ffff:ffff"),
            )],
            accept(),
        ),
        r(vec![cmp(Field::NfProto, KeyPart::NfProto(10))], accept()),
        r(
            vec![
                ncmp(Field::NfProto, KeyPart::NfProto(2)),
                cmp(Field::IpSaddr, v4("1.1.1.1")),
            ],
            accept(),
        ),
        r(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
            accept(),
        ),
        r(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(17)),
                ncmp(Field::ThDport, KeyPart::Port(53)),
            ],
            accept(),
        ),
        r(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(132)),
                cmp(Field::ThDport, KeyPart::PortRange(1, 5)),
            ],
            accept(),
        ),
        r(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                lookup(vec![Field::ThDport], "ports"),
            ],
            accept(),
        ),
        r(
            vec![
                cmp(Field::IpSaddr, v4("1.2.3.4")),
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                cmp(Field::ThDport, KeyPart::Port(80)),
            ],
            accept(),
        ),
        r(
            vec![cmp(Field::L4Proto, KeyPart::Proto(17))],
            Action::VMap {
                key: vec![Field::ThDport],
                map: "vp".into(),
            },
        ),
        r(
            vec![
                cmp(Field::L4Proto, KeyPart::Proto(6)),
                anon(
                    vec![Field::ThDport, Field::IpSaddr],
                    vec![
                        k(vec![KeyPart::Port(80), v4("1.2.3.4")]),
                        k(vec![KeyPart::Port(81), v4("1.2.3.5")]),
                    ],
                ),
            ],
            accept(),
        ),
        r(
            vec![cmp(Field::ThDport, KeyPart::PortRange(1000, 2000))],
            accept(),
        ),
        r(
            vec![ncmp(Field::ThDport, KeyPart::PortRange(1000, 2000))],
            accept(),
        ),
        r(vec![ncmp(Field::ThDport, KeyPart::Port(22))], accept()),
        r(
            vec![cmp(Field::Iifname, KeyPart::Ifname("veth0".into()))],
            Action::Verdict(Verdict::Jump("np_b".into())),
        ),
        r(
            vec![ncmp(Field::Oifname, KeyPart::Ifname("eth0".into()))],
            accept(),
        ),
        r(vec![lookup(vec![Field::Iifname], "ifs")], accept()),
        r(
            vec![cmp(Field::Icmpv6Type, KeyPart::Icmpv6Type(134))],
            accept(),
        ),
        r(
            vec![
                cmp(Field::Ip6Saddr, v6("::1")),
                cmp(Field::Icmpv6Type, KeyPart::Icmpv6Type(1)),
            ],
            accept(),
        ),
        r(vec![cmp(Field::L4Proto, KeyPart::Proto(58))], accept()),
        r(vec![cmp(Field::L4Proto, KeyPart::Proto(200))], accept()),
        r(vec![lookup(vec![Field::NfProto], "nf")], accept()),
        r(vec![lookup(vec![Field::Icmpv6Type], "it")], accept()),
        r(vec![lookup(vec![Field::L4Proto], "protos")], accept()),
        r(
            vec![lookup(vec![Field::L4Proto, Field::ThDport], "pp")],
            accept(),
        ),
        r(
            vec![lookup(vec![Field::L4Proto, Field::ThDport], "pi")],
            accept(),
        ),
        r(
            vec![lookup(vec![Field::IpSaddr, Field::ThDport], "empty")],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::IpSaddr],
                vec![k(vec![v4("10.0.0.1")]), k(vec![v4("10.0.0.2")])],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::IpSaddr],
                vec![
                    k(vec![v4r("10.0.0.0", "10.255.255.255")]),
                    k(vec![v4("11.0.0.1")]),
                ],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::NfProto],
                vec![k(vec![KeyPart::NfProto(2)]), k(vec![KeyPart::NfProto(10)])],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::Oifname],
                vec![
                    k(vec![KeyPart::Ifname("c".into())]),
                    k(vec![KeyPart::Ifname("d".into())]),
                ],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::L4Proto],
                vec![k(vec![KeyPart::Proto(6)]), k(vec![KeyPart::Proto(17)])],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::ThDport],
                vec![k(vec![KeyPart::Port(80)]), k(vec![KeyPart::Port(443)])],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::Iifname],
                vec![
                    k(vec![KeyPart::Ifname("a".into())]),
                    k(vec![KeyPart::Ifname("b".into())]),
                ],
            )],
            accept(),
        ),
        r(
            vec![anon(
                vec![Field::Ip6Saddr],
                vec![
                    k(vec![v6("fd00::1")]),
                    k(vec![v6r("fd00::100", "fd00::1ff")]),
                ],
            )],
            accept(),
        ),
        r(
            vec![cmp(Field::IpSaddr, v4("1.2.3.4"))],
            Action::VMap {
                key: vec![Field::IpDaddr],
                map: "v4".into(),
            },
        )
        .counted(),
        r(
            vec![cmp(Field::ThDport, KeyPart::Port(8080))],
            Action::Continue,
        )
        .comment("a b"),
    ];
    chain(f);
    chain(base("input", Hook::Input, -5, ChainPolicy::Drop));
    chain(base("out", Hook::Output, 100, ChainPolicy::Accept));
    chain(base("pre", Hook::Prerouting, -300, ChainPolicy::Accept));
    chain(base("post", Hook::Postrouting, -150, ChainPolicy::Accept));
    chain(base("sec", Hook::Forward, 45, ChainPolicy::Accept));
    chain(base(
        "ing",
        Hook::Ingress {
            device: "v0".into(),
        },
        0,
        ChainPolicy::Accept,
    ));
    t
}

// ---------------------------------------------------------------------------------------------
// nft output normalisation: element order, counters, wrapping (the documented differences)

fn normalise(listing: &str) -> String {
    // Join wrapped element lists onto one line.
    let mut joined = String::new();
    for line in listing.lines() {
        if line.starts_with("\t\t\t     ") {
            joined.push(' ');
            joined.push_str(line.trim_start());
        } else {
            if !joined.is_empty() {
                joined.push('\n');
            }
            joined.push_str(line);
        }
    }
    let mut out = String::new();
    for line in joined.lines() {
        let mut line = line.to_string();
        // counters
        while let Some(p) = line.find("counter packets ") {
            let rest = &line[p + "counter packets ".len()..];
            let after_bytes = rest.find("bytes ").map(|b| b + "bytes ".len()).unwrap_or(0);
            let num_end = rest[after_bytes..]
                .find(|c: char| !c.is_ascii_digit())
                .map(|e| after_bytes + e)
                .unwrap_or(rest.len());
            line = format!("{}counter{}", &line[..p], &rest[num_end..]);
        }
        // element order inside every { a, b, c } on the line
        let mut result = String::new();
        let mut rest = line.as_str();
        while let Some(open) = rest.find("{ ") {
            let Some(close) = rest[open..].find(" }") else {
                break;
            };
            let inner = &rest[open + 2..open + close];
            let mut items: Vec<&str> = inner.split(", ").map(|s| s.trim_end_matches(',')).collect();
            items.sort();
            result.push_str(&rest[..open + 2]);
            result.push_str(&items.join(", "));
            rest = &rest[open + close..];
        }
        result.push_str(rest);
        out.push_str(&result);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// kernel and fake agree on what they accept

use nftpol::dataplane::{DataplaneError, Fake};
use nftpol::nft::diff::ErrorKind;
use nftpol::nft::transaction::Transaction;

/// Base table for the acceptance cases: a forward chain dispatching through map `m`, two
/// policy rule chains, an interval set of ipBlocks and a set `s4` used by a rule.
fn base_table() -> Table {
    use KeyType as T;
    let mut t = Table::new("nftpol");
    let mut m = Set::verdict_map("m", vec![T::Ipv4Addr, T::InetProto, T::InetService]);
    m.elements.insert(
        k(vec![v4("10.0.0.1"), KeyPart::Proto(6), KeyPart::Port(80)]),
        goto("np_a"),
    );
    m.elements.insert(
        k(vec![v4("10.0.0.2"), KeyPart::Proto(17), KeyPart::Port(53)]),
        goto("np_a"),
    );
    t.sets.insert(m.name.clone(), m);
    let mut c = Set::new("cidrs", vec![T::Ipv4Addr]).with_interval();
    c.elements
        .insert(k(vec![v4r("10.1.0.0", "10.1.255.255")]), None);
    t.sets.insert(c.name.clone(), c);
    let mut s = Set::new("s4", vec![T::Ipv4Addr]);
    s.elements.insert(k(vec![v4("10.9.0.1")]), None);
    t.sets.insert(s.name.clone(), s);
    t.sets
        .insert("spare".into(), Set::new("spare", vec![T::InetService]));
    let mut f = base("forward", Hook::Forward, 0, ChainPolicy::Accept);
    f.rules.push(Rule::new(
        vec![lookup(vec![Field::IpSaddr], "s4")],
        Action::Verdict(Verdict::Drop),
    ));
    f.rules.push(Rule::new(
        vec![],
        Action::VMap {
            key: vec![Field::IpDaddr, Field::L4Proto, Field::ThDport],
            map: "m".into(),
        },
    ));
    t.chains.insert(f.name.clone(), f);
    for (name, v) in [("np_a", Verdict::Accept), ("np_b", Verdict::Return)] {
        let mut c = Chain::regular(name);
        c.rules
            .push(Rule::new(vec![], Action::Verdict(v)).counted());
        t.chains.insert(c.name.clone(), c);
    }
    t
}

fn tx() -> Transaction {
    Transaction::new("nftpol")
}

fn mkey(ip: &str, proto: u8, port: u16) -> Key {
    k(vec![v4(ip), KeyPart::Proto(proto), KeyPart::Port(port)])
}

/// (name, transaction, accepted?)
fn acceptance_cases() -> Vec<(&'static str, Transaction, bool)> {
    let mut cases = Vec::new();
    let mut t = tx();
    t.add_elements
        .insert("m".into(), vec![(mkey("10.0.0.3", 6, 443), goto("np_b"))]);
    cases.push(("add a map element", t, true));
    let mut t = tx();
    t.delete_elements
        .insert("m".into(), vec![mkey("10.0.0.1", 6, 80)]);
    cases.push(("delete a map element", t, true));
    let mut t = tx();
    t.add_chains.push(Chain::regular("np_c"));
    t.add_rules
        .push(("np_c".into(), vec![Rule::new(vec![], accept()).counted()]));
    t.add_elements
        .insert("m".into(), vec![(mkey("10.0.0.4", 6, 80), goto("np_c"))]);
    cases.push((
        "new chain with a rule and an element pointing at it",
        t,
        true,
    ));
    let mut t = tx();
    t.flush_chains.push("np_a".into());
    t.add_rules.push((
        "np_a".into(),
        vec![Rule::new(vec![], accept()).comment("refilled")],
    ));
    cases.push(("flush and refill a chain", t, true));
    let mut t = tx();
    t.delete_sets.push("spare".into());
    cases.push(("delete an unused set", t, true));
    let mut t = tx();
    t.flush_chains.push("np_b".into());
    t.delete_chains.push("np_b".into());
    cases.push(("delete an unused chain", t, true));
    let mut t = tx();
    t.add_elements.insert(
        "cidrs".into(),
        vec![(k(vec![v4r("10.2.0.0", "10.2.255.255")]), None)],
    );
    cases.push(("add an adjacent interval", t, true));
    let mut t = tx();
    t.delete_elements.insert(
        "cidrs".into(),
        vec![k(vec![v4r("10.1.0.0", "10.1.255.255")])],
    );
    t.add_elements.insert(
        "cidrs".into(),
        vec![(k(vec![v4r("10.1.0.0", "10.1.127.255")]), None)],
    );
    cases.push(("shrink an interval (delete, then add)", t, true));

    let mut t = tx();
    t.add_rules.push((
        "np_a".into(),
        vec![Rule::new(
            vec![],
            Action::Verdict(Verdict::Jump("nope".into())),
        )],
    ));
    cases.push(("rule jumps to a missing chain", t, false));
    let mut t = tx();
    t.add_elements
        .insert("m".into(), vec![(mkey("10.0.0.3", 6, 443), goto("nope"))]);
    cases.push(("map element jumps to a missing chain", t, false));
    let mut t = tx();
    t.add_elements
        .insert("m".into(), vec![(mkey("10.0.0.1", 6, 80), goto("np_a"))]);
    cases.push(("duplicate element", t, false));
    let mut t = tx();
    t.delete_elements
        .insert("m".into(), vec![mkey("10.0.0.9", 6, 80)]);
    cases.push(("delete a missing element", t, false));
    let mut t = tx();
    t.add_rules.push((
        "np_a".into(),
        vec![Rule::new(
            vec![lookup(vec![Field::IpSaddr], "nope")],
            accept(),
        )],
    ));
    cases.push(("lookup of a missing set", t, false));
    let mut t = tx();
    t.add_elements
        .insert("nope".into(), vec![(k(vec![v4("1.1.1.1")]), None)]);
    cases.push(("elements for a missing set", t, false));
    let mut t = tx();
    t.delete_sets.push("s4".into());
    cases.push(("delete a set still used by a rule", t, false));
    let mut t = tx();
    t.flush_chains.push("np_a".into());
    t.delete_chains.push("np_a".into());
    cases.push(("delete a chain still used by map elements", t, false));
    let mut t = tx();
    t.delete_chains.push("np_b".into());
    cases.push((
        "delete a chain that still has rules (they go with it)",
        t,
        true,
    ));
    let mut t = tx();
    t.add_elements.insert(
        "m".into(),
        vec![(k(vec![v4("10.0.0.3"), KeyPart::Proto(6)]), goto("np_a"))],
    );
    cases.push(("element with too few fields", t, false));
    let mut t = tx();
    t.add_elements.insert(
        "s4".into(),
        vec![(k(vec![v4r("10.9.1.0", "10.9.1.255")]), None)],
    );
    cases.push(("range in a set without flags interval", t, false));
    let mut t = tx();
    t.add_elements.insert(
        "cidrs".into(),
        vec![(k(vec![v4r("10.1.128.0", "10.1.128.255")]), None)],
    );
    cases.push(("interval inside an existing interval", t, false));
    let mut t = tx();
    t.add_elements.insert(
        "cidrs".into(),
        vec![(k(vec![v4r("10.0.255.0", "10.1.0.255")]), None)],
    );
    cases.push(("interval overlapping the start of another", t, false));
    let mut t = tx();
    t.add_rules.push((
        "np_a".into(),
        vec![Rule::new(
            vec![],
            Action::Verdict(Verdict::Jump("np_b".into())),
        )],
    ));
    t.add_rules.push((
        "np_b".into(),
        vec![Rule::new(
            vec![],
            Action::Verdict(Verdict::Jump("np_a".into())),
        )],
    ));
    cases.push(("jump loop", t, false));
    let mut t = tx();
    t.add_chains.push(Chain::regular("np_a"));
    cases.push(("add an existing chain", t, false));
    let mut t = tx();
    t.add_sets.push(Set::new("s4", vec![KeyType::Ipv4Addr]));
    cases.push(("add an existing set", t, false));
    let mut t = tx();
    t.add_rules.push((
        "np_a".into(),
        vec![Rule::new(
            vec![],
            Action::Verdict(Verdict::Goto("forward".into())),
        )],
    ));
    cases.push(("goto a base chain", t, false));
    let mut t = tx();
    t.add_elements
        .insert("m".into(), vec![(mkey("10.0.0.5", 6, 80), goto("np_b"))]);
    t.add_chains.push(Chain::regular("np_c"));
    t.add_rules.push((
        "np_c".into(),
        vec![Rule::new(
            vec![],
            Action::Verdict(Verdict::Jump("nope".into())),
        )],
    ));
    cases.push(("valid changes followed by one invalid rule", t, false));
    cases
}

/// Replaces whatever is in the kernel with `table`.
fn reset(dp: &mut Netlink, table: &Table) {
    let mut t = diff(None, table);
    t.replace = true;
    dp.apply(&t).unwrap();
}

#[test]
fn kernel_and_fake_accept_and_refuse_the_same_transactions() {
    let Some(ns) = Netns::enter("kernel_and_fake_accept_and_refuse_the_same_transactions") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    let base_t = base_table();
    let mut mismatches = Vec::new();
    for (name, t, accepted) in acceptance_cases() {
        reset(&mut dp, &base_t);
        let before = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
        let kernel = dp.apply(&t);
        let mut fake = Fake::with_table(base_t.clone());
        let faked = fake.apply(&t);
        eprintln!(
            "{name}: kernel {:?} / fake {:?}",
            kernel
                .as_ref()
                .map(|_| ())
                .map_err(|e| (e.kind(), e.to_string())),
            faked
                .as_ref()
                .map(|_| ())
                .map_err(|e| (e.kind(), e.to_string()))
        );
        if kernel.is_ok() != accepted || faked.is_ok() != accepted {
            mismatches.push(name);
        }
        if let (Err(k), Err(f)) = (&kernel, &faked) {
            // The kernel reports overlapping intervals as EEXIST.
            let same = k.kind() == f.kind()
                || (k.kind() == Some(ErrorKind::Exists) && f.kind() == Some(ErrorKind::Overlap));
            if !same {
                mismatches.push(name);
            }
        }
        let live = dp.dump("nftpol").unwrap();
        if kernel.is_err() {
            // A refused batch leaves the kernel exactly as before.
            assert_eq!(
                ns.run(&["nft", "list", "table", "inet", "nftpol"]),
                before,
                "{name}: kernel changed"
            );
            assert_eq!(live.as_ref(), Some(&base_t), "{name}: dump changed");
            assert_eq!(fake.table("nftpol"), Some(&base_t), "{name}: fake changed");
        } else {
            assert_eq!(
                live.as_ref(),
                fake.table("nftpol"),
                "{name}: kernel and fake differ after applying"
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "kernel or fake disagree with the expectation on: {mismatches:?}"
    );
}

#[test]
fn kernel_errors_name_the_failing_element() {
    let Some(_ns) = Netns::enter("kernel_errors_name_the_failing_element") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    reset(&mut dp, &base_table());
    // Thousands of fresh elements spread over several messages, one duplicate among them.
    let mut t = tx();
    let mut elems: Vec<(Key, Option<Verdict>)> = (0..5000u32)
        .map(|i| {
            (
                mkey(&format!("10.3.{}.{}", i / 250, i % 250), 6, 8080),
                goto("np_b"),
            )
        })
        .collect();
    elems.insert(3777, (mkey("10.0.0.1", 6, 80), goto("np_a")));
    t.add_elements.insert("m".into(), elems);
    let err = dp.apply(&t).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("add element 10.0.0.1 . tcp . 80 to map m: File exists"),
        "error does not name the element: {msg}"
    );
    assert!(matches!(err, DataplaneError::Kernel { errno, .. } if errno == libc_eexist()));
    assert_eq!(dp.dump("nftpol").unwrap(), Some(base_table()));
}

fn libc_eexist() -> i32 {
    std::io::Error::from(std::io::ErrorKind::AlreadyExists)
        .raw_os_error()
        .unwrap_or(17)
}

#[test]
fn identical_table_sends_nothing_and_replace_works_with_or_without_a_table() {
    let Some(ns) = Netns::enter("identical_table_sends_nothing") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    let t = every_variant_without_ingress();
    // replace on a missing table
    let mut full = diff(None, &t);
    full.replace = true;
    dp.apply(&full).unwrap();
    let live = dp.dump("nftpol").unwrap();
    assert_eq!(live.as_ref(), Some(&t));
    let again = diff(live.as_ref(), &t);
    assert!(again.is_empty(), "{again:?}");
    let rep = dp.apply(&again).unwrap();
    assert_eq!(rep.messages, 0);
    assert_eq!(rep.bytes, 0);
    // replace of an existing table, in one batch
    dp.apply(&full).unwrap();
    assert_eq!(dp.dump("nftpol").unwrap(), Some(t.clone()));
    assert_eq!(
        normalise(&ns.run(&["nft", "list", "table", "inet", "nftpol"])),
        normalise(&render(&t))
    );
    // a changed base chain policy replaces the whole table
    let mut t2 = t.clone();
    t2.chains
        .get_mut("input")
        .unwrap()
        .base
        .as_mut()
        .unwrap()
        .policy = ChainPolicy::Accept;
    let d = diff(Some(&t), &t2);
    assert!(d.replace);
    dp.apply(&d).unwrap();
    assert_eq!(dp.dump("nftpol").unwrap(), Some(t2));
}

fn every_variant_without_ingress() -> Table {
    let mut t = every_variant();
    t.chains.remove("ing");
    t
}

#[test]
fn foreign_rules_are_detected_and_repaired() {
    let Some(ns) = Netns::enter("foreign_rules_are_detected_and_repaired") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    let t = base_table();
    reset(&mut dp, &t);
    ns.run(&[
        "nft", "add", "rule", "inet", "nftpol", "np_a", "ip", "saddr", "1.2.3.4", "log",
    ]);
    ns.run(&[
        "nft", "insert", "rule", "inet", "nftpol", "np_b", "ip", "saddr", "1.2.3.4", "tcp",
        "sport", "22", "drop",
    ]);
    ns.run(&[
        "nft",
        "add",
        "element",
        "inet",
        "nftpol",
        "s4",
        "{ 10.9.9.9 }",
    ]);
    let live = dp.dump("nftpol").unwrap().unwrap();
    assert_ne!(live, t);
    let foreign = live.chains["np_a"].rules.last().unwrap();
    assert!(
        foreign
            .comment
            .as_deref()
            .unwrap()
            .starts_with(nftpol::dataplane::FOREIGN_MARK)
    );
    let fix = diff(Some(&live), &t);
    assert_eq!(fix.flush_chains.len(), 2, "{fix:?}");
    assert_eq!(fix.stats().elements_deleted, 1);
    dp.apply(&fix).unwrap();
    assert_eq!(dp.dump("nftpol").unwrap(), Some(t));
}

#[test]
fn dump_reads_only_our_table() {
    let Some(ns) = Netns::enter("dump_reads_only_our_table") else {
        return;
    };
    let mut dp = Netlink::new().unwrap();
    assert_eq!(dp.dump("nftpol").unwrap(), None);
    ns.nft_load(
        "table inet other {\n\tset s4 { type ipv4_addr; elements = { 1.1.1.1 } }\n\tchain np_a { ip saddr @s4 drop; }\n\tchain forward { type filter hook forward priority 0; policy drop; }\n}\ntable ip nftpol {\n\tchain np_a {\n\t\taccept\n\t}\n}\n",
    )
    .unwrap();
    assert_eq!(dp.dump("nftpol").unwrap(), None);
    let t = base_table();
    reset(&mut dp, &t);
    assert_eq!(dp.dump("nftpol").unwrap(), Some(t));
    // and the other tables are untouched
    assert!(
        ns.run(&["nft", "list", "table", "inet", "other"])
            .contains("1.1.1.1")
    );
    assert!(
        ns.run(&["nft", "list", "table", "ip", "nftpol"])
            .contains("accept")
    );
}
