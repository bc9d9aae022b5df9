//! What the plugin adds to every pod start: exec + parse + one round trip to a trivial local
//! agent, over 1000 ADDs, next to the floor (exec of a static no-op) and the socket round trip
//! alone. A figure, not a pass/fail test:
//!
//! ```sh
//! cargo test -p nftpol-cni --release --test overhead -- --ignored --nocapture
//! # the static build: NFTPOL_CNI_BIN=target-static/x86_64-unknown-linux-gnu/release/nftpol-cni ...
//! ```

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{FakeAgent, PLUGIN, pod_env, run_binary};
use nftpol_cni::plugin::{AgentClient, UnixSocketClient};
use nftpol_cni::protocol::Request;

const RUNS: usize = 1000;

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"f6:7d:ab:0c:31:36"},{"name":"vethed626701","mac":"d2:22:cc:49:64:ce"},{"name":"eth0","mac":"e2:9c:e9:64:9c:d2","sandbox":"/var/run/netns/cni-1234"}],"ips":[{"interface":2,"address":"10.99.0.2/24","gateway":"10.99.0.1"},{"interface":2,"address":"fd00:99::2/64","gateway":"fd00:99::1"}],"dns":{}}"#;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "{name:<44} p50 {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms   (n={})",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn plugin_overhead_p50_p99() {
    let agent = FakeAgent::ready();
    let plugin = std::env::var_os("NFTPOL_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PLUGIN));
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"nftpol","socket":"{}","prevResult":{PREV}}}"#,
        agent.socket.display()
    );
    let env = pod_env("ADD");

    // Floor: spawning any process with piped stdio.
    let floor: Vec<Duration> = (0..RUNS)
        .map(|_| run_binary(std::path::Path::new("/bin/true"), &env, "", &[]).elapsed)
        .collect();

    // The socket round trip alone, in process.
    let request = Request::Status;
    let rtt: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            UnixSocketClient
                .call(&agent.socket, &request, Duration::from_secs(5))
                .unwrap();
            t.elapsed()
        })
        .collect();

    // The whole plugin: exec + parse + round trip + result.
    let add: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let run = run_binary(&plugin, &env, &conf, &[]);
            assert_eq!(run.status, 0, "{run:?}");
            run.elapsed
        })
        .collect();

    println!("\nplugin: {}", plugin.display());
    summary("exec /bin/true (spawn floor)", floor);
    summary("agent round trip in process (unix socket)", rtt);
    summary("nftpol-cni ADD (exec+parse+round trip)", add);
}
