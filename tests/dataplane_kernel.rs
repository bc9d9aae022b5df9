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

fn smoke_table() -> Table {
    let mut t = Table::new("nftpol");
    let mut m = Set::verdict_map(
        "m",
        vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
    );
    m.elements.insert(
        Key(vec![
            KeyPart::V4("10.0.0.1".parse().unwrap()),
            KeyPart::Proto(6),
            KeyPart::Port(80),
        ]),
        Some(Verdict::Goto("np".into())),
    );
    t.sets.insert(m.name.clone(), m);
    let mut np = Chain::regular("np");
    np.rules.push(
        Rule::new(vec![], Action::Verdict(Verdict::Accept))
            .counted()
            .comment("ns/p ingress rule 0"),
    );
    t.chains.insert(np.name.clone(), np);
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
            key: vec![Field::IpDaddr, Field::L4Proto, Field::ThDport],
            map: "m".into(),
        },
    ));
    t.chains.insert(f.name.clone(), f);
    t
}

#[test]
fn smoke_apply_list_dump() {
    let Some(ns) = Netns::enter("smoke_apply_list_dump") else {
        return;
    };
    let t = smoke_table();
    let mut dp = Netlink::new().unwrap();
    let tx = diff(None, &t);
    let rep = dp.apply(&tx).unwrap();
    eprintln!("{rep:?}");
    let listed = ns.run(&["nft", "list", "table", "inet", "nftpol"]);
    eprintln!("{listed}");
    eprintln!("{}", render(&t));
    let back = dp.dump("nftpol").unwrap();
    assert_eq!(back.as_ref(), Some(&t));
}
