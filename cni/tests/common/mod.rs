//! Test doubles shared by the plugin's integration tests: a fake agent (a unix-socket server
//! thread speaking the protocol) and a way to run the built plugin binary the way a container
//! runtime does (environment + stdin, result on stdout).

#![allow(dead_code)] // each test crate uses a different part

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nftpol_cni::protocol::{Request, Response};

/// The plugin binary cargo built for these tests.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_nftpol-cni");

type Answer = dyn Fn(&Request) -> (Duration, Response) + Send + Sync;

/// A fake agent listening on a socket in its own temp dir. Each connection gets one answer,
/// possibly after a delay, from the closure; every request is recorded.
pub struct FakeAgent {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// An agent that answers `ok` at once.
    pub fn ready() -> FakeAgent {
        FakeAgent::start(|_| (Duration::ZERO, Response::ok()))
    }

    pub fn start(
        answer: impl Fn(&Request) -> (Duration, Response) + Send + Sync + 'static,
    ) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (seen, answer) = (seen.clone(), answer.clone());
                    std::thread::spawn(move || serve(conn, &seen, &*answer));
                }
            })
        };
        FakeAgent {
            _dir: dir,
            socket,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: UnixStream, seen: &Mutex<Vec<Request>>, answer: &Answer) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let request: Request = serde_json::from_str(&line).expect("the plugin sent a bad request line");
    seen.lock().unwrap().push(request.clone());
    let (delay, response) = answer(&request);
    std::thread::sleep(delay);
    let mut out = serde_json::to_vec(&response).unwrap();
    out.push(b'\n');
    let mut conn = conn;
    let _ = conn.write_all(&out);
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one plugin run produced.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// stdout parsed as JSON (panics with the output if it is not exactly one JSON value).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }
}

/// The environment containerd and CRI-O give a plugin for a pod `prod/web-0`.
pub fn pod_env(command: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755;\
             K8S_POD_UID=5e1c3c6e-1b7a-4d3e-9a52-0c2a3f9b8d11",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `binary` with exactly `env` and `stdin`, from the current directory.
pub fn run_binary(binary: &Path, env: &[(String, String)], stdin: &str, wrapper: &[&str]) -> Run {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        elapsed: start.elapsed(),
    }
}

/// Runs our plugin like a runtime would.
pub fn run_plugin(env: &[(String, String)], stdin: &str) -> Run {
    run_binary(Path::new(PLUGIN), env, stdin, &[])
}

/// Are we root? (Reads /proc, no libc.)
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
