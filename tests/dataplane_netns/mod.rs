//! A throw-away network namespace entered by the current test thread.
#![allow(dead_code)] // each test file uses a different part of it
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
