//! `nftpol agent` as a process, the way the Helm chart and the e2e harness run it: flags and
//! their environment variables, port 0 with the bound address published in the state
//! directory, health endpoints, the CNI socket, and a clean exit 0 on SIGTERM.
//!
//! The API server here is unreachable, so the agent never syncs and never programs anything
//! (it uses its own table name besides); no kernel state is touched.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nftpol");

fn agent_cmd() -> Command {
    let mut c = Command::new(BIN);
    c.arg("agent");
    for var in [
        "KUBECONFIG",
        "NODE_NAME",
        "NFTPOL_TABLE",
        "NFTPOL_SOCKET",
        "NFTPOL_STATE_DIR",
        "NFTPOL_METRICS_ADDR",
        "NFTPOL_LOG_LEVEL",
        "NFTPOL_LOG_FORMAT",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = agent_cmd().arg("--help").output().expect("run nftpol");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--node-name", "NODE_NAME"),
        ("--kubeconfig", "KUBECONFIG"),
        ("--table", "NFTPOL_TABLE"),
        ("--socket", "NFTPOL_SOCKET"),
        ("--state-dir", "NFTPOL_STATE_DIR"),
        ("--metrics-addr", "NFTPOL_METRICS_ADDR"),
        ("--log-level", "NFTPOL_LOG_LEVEL"),
        ("--log-format", "NFTPOL_LOG_FORMAT"),
        ("--resync-interval", "NFTPOL_RESYNC_INTERVAL"),
        ("--debounce", "NFTPOL_DEBOUNCE"),
        ("--kernel-watch", "NFTPOL_KERNEL_WATCH"),
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
        assert!(
            help.contains(&format!("env: {env}")),
            "{env} missing from:\n{help}"
        );
    }
    for default in [
        "[default: nftpol]",
        "[default: /run/nftpol/nftpol.sock]",
        "[default: 0.0.0.0:9464]",
        "[default: 5m]",
        "[default: 20ms]",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
}

#[test]
fn node_name_is_required_and_durations_are_checked() {
    let out = agent_cmd().output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-name"));
    let out = agent_cmd()
        .args(["--node-name", "n", "--debounce", "20"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing unit"));
}

#[test]
fn a_missing_kubeconfig_is_a_clear_error() {
    let out = agent_cmd()
        .args([
            "--node-name",
            "n",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}

fn get(addr: &str, path: &str) -> (u16, String) {
    request(addr, "GET", path, "")
}

fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn status(socket: &Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect socket");
    s.write_all(b"{\"op\":\"status\"}\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn runs_as_a_subprocess_on_port_0_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    // Nothing listens on port 1: the agent keeps retrying and never becomes ready.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
         users:\n- name: u\n  user: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
         current-context: x\n",
    )
    .expect("kubeconfig");
    let state = dir.path().join("state");
    let socket = dir.path().join("run").join("nftpol.sock");
    let mut child = agent_cmd()
        .args(["--node-name", "node-x", "--table", "nftpol-clitest"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");

    let addr_file = state.join("metrics-addr");
    let start = Instant::now();
    while !(addr_file.exists() && socket.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file).expect("addr");
    let addr = addr.trim();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    assert_eq!(get(addr, "/healthz").0, 200);
    let (code, why) = get(addr, "/readyz");
    assert_eq!(code, 503, "{why}");
    let (code, metrics) = get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("nftpol_ready 0"), "{metrics}");
    assert!(status(&socket).contains("\"code\":50"));
    // The log filter can be changed at runtime, from loopback.
    assert_eq!(get(addr, "/loglevel"), (200, "info\n".to_string()));
    let (code, _) = request(addr, "PUT", "/loglevel", "debug,kube=info");
    assert_eq!(code, 200);
    assert_eq!(
        get(addr, "/loglevel"),
        (200, "debug,kube=info\n".to_string())
    );
    let (code, _) = request(addr, "PUT", "/loglevel", "no such=level=x");
    assert_eq!(code, 400);

    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM");
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(code.success(), "exit {code:?}; stderr:\n{stderr}");
    assert!(!socket.exists(), "socket left behind");
    // JSON log lines.
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
}
