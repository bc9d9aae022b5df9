//! The dataplane against a real kernel: every test runs in a network namespace it creates and
//! always removes, so the host's ruleset is never touched. Without root the tests are skipped
//! with a loud message.
//!
//! Address plan: local pods 10.0.0.0/24 and fd00::/64, peers 10.1.0.0/16, ipBlocks 192.0.2.0/24.

mod netns {
    //! A throw-away network namespace entered by the current test thread.
    use std::fs::File;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::sched::{CloneFlags, setns};

    pub struct Netns {
        pub name: String,
        orig: File,
    }

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    impl Netns {
        /// Creates a namespace and moves the calling thread into it; `None` (with a loud
        /// message) when not root.
        pub fn enter(test: &str) -> Option<Netns> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("!!!! SKIPPING {test}: kernel tests need root (network namespaces) !!!!");
                return None;
            }
            let name = format!(
                "nftpol-dp-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {name} failed");
            let orig = File::open("/proc/thread-self/ns/net").expect("open own netns");
            let guard = Netns { name, orig };
            let ns = File::open(format!("/run/netns/{}", guard.name)).expect("open new netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            Some(guard)
        }

        /// Runs a command inside the namespace; panics on failure.
        pub fn run(&self, cmd: &[&str]) -> String {
            let out = self.try_run(cmd);
            match out {
                Ok(s) => s,
                Err(e) => panic!("{cmd:?} failed: {e}"),
            }
        }

        pub fn try_run(&self, cmd: &[&str]) -> Result<String, String> {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd)
                .output()
                .expect("spawn ip netns exec");
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }

        /// Loads a ruleset text with `nft -f`.
        pub fn nft_load(&self, text: &str) -> Result<(), String> {
            let path = std::env::temp_dir().join(format!("{}.nft", self.name));
            std::fs::write(&path, text).expect("write ruleset file");
            let r = self.try_run(&["nft", "-f", path.to_str().unwrap_or_default()]);
            let _ = std::fs::remove_file(&path);
            r.map(|_| ())
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = setns(&self.orig, CloneFlags::CLONE_NEWNET);
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

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
