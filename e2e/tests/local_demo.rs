//! The local demo (`e2e/examples/demo.rs`, run by `e2e/demo.sh`), run as a user runs it:
//! to the end, and interrupted by Ctrl-C half-way. Either way every namespace, agent and
//! state directory it created must be gone when it exits.
//!
//! Runs `target/<profile>/examples/demo`, which `cargo test` builds along with the tests (a
//! `--test local_demo` filter alone does not: `cargo build -p nftpol-e2e --examples` first). Needs
//! root and the built `nftpol` and `nftpol-cni`; skips loudly when not root. About 5 s.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nftpol_e2e::netns::{NETNS_DIR, STATE_ROOT};
use nftpol_e2e::skip_unless_root;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The demo example next to this test's profile directory.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/local_demo-<hash>
    let profile = exe.parent().and_then(Path::parent).unwrap();
    let demo = profile.join("examples").join("demo");
    assert!(
        demo.is_file(),
        "{} is missing: build it with `cargo build -p nftpol-e2e --examples`",
        demo.display()
    );
    demo
}

/// Starts the demo in a process group of its own (as a shell starts a foreground job), its
/// output piped.
fn start_demo() -> Child {
    nftpol_e2e::init_logging();
    Command::new(demo_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Entries of `dir` starting with `demo-<pid>-`.
fn leftovers(dir: &str, pid: u32) -> Vec<String> {
    let prefix = format!("demo-{pid}-");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The agents' pids from the cluster description ("... agent pid <n>").
fn agent_pids(output: &str) -> Vec<u32> {
    output
        .lines()
        .filter_map(|l| l.split("agent pid ").nth(1)?.trim().parse().ok())
        .collect()
}

fn assert_all_removed(pid: u32, output: &str) {
    assert_eq!(leftovers(NETNS_DIR, pid), Vec::<String>::new(), "{output}");
    assert_eq!(leftovers(STATE_ROOT, pid), Vec::<String>::new(), "{output}");
    let agents = agent_pids(output);
    assert_eq!(agents.len(), 2, "{output}");
    for agent in agents {
        assert!(
            !Path::new(&format!("/proc/{agent}")).exists(),
            "agent {agent} still runs\n{output}"
        );
    }
}

#[test]
fn the_demo_shows_both_examples_as_their_readmes_say_and_removes_everything() {
    skip_unless_root!("the_demo_shows_both_examples_as_their_readmes_say_and_removes_everything");
    let child = start_demo();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    // Before and after the policies, for each example.
    assert_eq!(
        stdout.matches("as the example's README says").count(),
        4,
        "{all}"
    );
    for text in [
        "[6/6] node-0's table",
        "table inet nftpol {",
        "goto np_tenant-a_allow-from-ingress-nginx_ingress_0",
        "<- changed: 4, 5, 6",
        "sudo e2e/demo.sh --keep",
        "Done in",
    ] {
        assert!(stdout.contains(text), "no {text:?} in:\n{all}");
    }
    assert_all_removed(pid, &all);
}

#[test]
fn ctrl_c_half_way_removes_everything() {
    skip_unless_root!("ctrl_c_half_way_removes_everything");
    let mut child = start_demo();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        let before_matrix = line.starts_with("[3/6]");
        line.clear();
        if before_matrix {
            // As a terminal's Ctrl-C: the whole foreground group, agents included.
            killpg(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
            break;
        }
    }
    stdout.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let all = format!("{seen}\n--- stderr\n{stderr}");
    assert_eq!(status.code(), Some(130), "{all}");
    assert!(stderr.contains("SIGINT: stopping"), "{all}");
    assert!(
        seen.contains("Interrupted after") && seen.contains("everything the demo created is gone"),
        "{all}"
    );
    assert!(!seen.contains("[5/6]"), "{all}");
    assert_all_removed(pid, &all);
}
