//! The built `nftpol-cni` binary, run like a container runtime runs it (environment, config on
//! stdin, result on stdout), against a fake agent on a unix socket.

mod common;

use std::time::Duration;

use common::{FakeAgent, pod_env, run_plugin};
use nftpol_cni::protocol::{Request, Response};

/// What Debian's `bridge` plugin printed on this machine (cniVersion 1.0.0, dual stack),
/// as a runtime embeds it: pretty-printed, keys in the plugin's order.
const BRIDGE_RESULT: &str = r#"{
    "cniVersion": "1.0.0",
    "interfaces": [
        {
            "name": "cni0",
            "mac": "f6:7d:ab:0c:31:36"
        },
        {
            "name": "vethed626701",
            "mac": "d2:22:cc:49:64:ce"
        },
        {
            "name": "eth0",
            "mac": "e2:9c:e9:64:9c:d2",
            "sandbox": "/var/run/netns/cni-1234"
        }
    ],
    "ips": [
        {
            "interface": 2,
            "address": "10.99.0.2/24",
            "gateway": "10.99.0.1"
        },
        {
            "interface": 2,
            "address": "fd00:99::2/64",
            "gateway": "fd00:99::1"
        }
    ],
    "dns": {}
}"#;

/// Our plugin's stdin: the conflist's name and version merged in, our keys, `extra` keys.
fn stdin(agent_socket: &std::path::Path, version: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"cbr0","type":"nftpol","socket":"{}","timeoutSeconds":5{extra}}}"#,
        agent_socket.display()
    )
}

fn with_prev(socket: &std::path::Path) -> String {
    stdin(
        socket,
        "1.0.0",
        &format!(r#","prevResult":{BRIDGE_RESULT}"#),
    )
}

#[test]
fn add_tells_the_agent_about_the_pod_and_prints_prev_result_unchanged() {
    let agent = FakeAgent::ready();
    let run = run_plugin(&pod_env("ADD"), &with_prev(&agent.socket));
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(run.stdout, format!("{BRIDGE_RESULT}\n"));
    let reqs = agent.requests();
    let [Request::Add(att)] = reqs.as_slice() else {
        panic!("{reqs:?}")
    };
    assert_eq!(att.namespace, "prod");
    assert_eq!(att.name, "web-0");
    assert_eq!(
        att.uid.as_deref(),
        Some("5e1c3c6e-1b7a-4d3e-9a52-0c2a3f9b8d11")
    );
    assert_eq!(att.id.ifname, "eth0");
    assert!(att.id.container_id.starts_with("3f6940ab"));
    assert_eq!(att.netns, "/var/run/netns/cni-1234");
    assert_eq!(att.host_interface.as_deref(), Some("vethed626701"));
    assert_eq!(
        att.ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        ["10.99.0.2", "fd00:99::2"]
    );
}

#[test]
fn add_with_no_agent_fails_at_once_with_try_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nftpol.sock");
    let run = run_plugin(&pod_env("ADD"), &with_prev(&missing));
    assert_eq!(run.status, 1);
    let e = run.json();
    assert_eq!(e["code"], 11, "{e}");
    assert_eq!(e["cniVersion"], "1.0.0");
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "nftpol agent not reachable at {}: ",
            missing.display()
        )),
        "{msg}"
    );
    assert!(e["details"].as_str().unwrap().contains("retries"), "{e}");
    assert!(run.elapsed < Duration::from_secs(2), "{:?}", run.elapsed);

    // A socket file nobody listens on (the agent died): refused, also at once.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let run = run_plugin(&pod_env("ADD"), &with_prev(&missing));
    assert_eq!(run.json()["code"], 11);
    assert!(
        run.json()["msg"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    assert!(run.elapsed < Duration::from_secs(2), "{:?}", run.elapsed);
}

#[test]
fn add_gives_up_after_timeout_seconds_when_the_agent_is_slow() {
    let agent = FakeAgent::start(|_| (Duration::from_secs(4), Response::ok()));
    let conf = stdin(
        &agent.socket,
        "1.0.0",
        &format!(r#","prevResult":{BRIDGE_RESULT}"#),
    )
    .replace(r#""timeoutSeconds":5"#, r#""timeoutSeconds":0.5"#);
    let run = run_plugin(&pod_env("ADD"), &conf);
    assert_eq!(run.status, 1);
    let e = run.json();
    assert_eq!(e["code"], 11);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .ends_with("no answer within 500ms"),
        "{e}"
    );
    assert!(
        run.elapsed >= Duration::from_millis(500) && run.elapsed < Duration::from_secs(3),
        "{:?}",
        run.elapsed
    );
}

#[test]
fn agent_errors_reach_the_runtime_with_their_code() {
    let agent = FakeAgent::start(|_| {
        (
            Duration::ZERO,
            Response::error(
                11,
                "nftpol agent is still syncing",
                "caches not synced for 3s",
            ),
        )
    });
    let run = run_plugin(&pod_env("ADD"), &with_prev(&agent.socket));
    assert_eq!(run.status, 1);
    let e = run.json();
    assert_eq!(e["code"], 11);
    assert_eq!(e["msg"], "nftpol agent is still syncing");
    assert_eq!(e["details"], "caches not synced for 3s");
}

#[test]
fn add_without_prev_result_explains_the_chaining() {
    let agent = FakeAgent::ready();
    let run = run_plugin(&pod_env("ADD"), &stdin(&agent.socket, "1.0.0", ""));
    assert_eq!(run.status, 1);
    let e = run.json();
    assert_eq!(e["code"], 7);
    assert_eq!(
        e["msg"],
        "no prevResult: nftpol must be chained after an interface plugin"
    );
    assert!(agent.requests().is_empty());
}

#[test]
fn del_succeeds_silently_without_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_plugin(&pod_env("DEL"), &with_prev(&dir.path().join("gone.sock")));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:?}");
    assert!(run.stderr.contains("DEL succeeds anyway"), "{}", run.stderr);
}

#[test]
fn del_notifies_the_agent_even_without_netns_or_prev_result() {
    let agent = FakeAgent::ready();
    let env: Vec<_> = pod_env("DEL")
        .into_iter()
        .filter(|(k, _)| k != "CNI_NETNS")
        .collect();
    let run = run_plugin(&env, &stdin(&agent.socket, "1.0.0", ""));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""));
    let reqs = agent.requests();
    let [Request::Del(att)] = reqs.as_slice() else {
        panic!("{reqs:?}")
    };
    assert_eq!(
        (att.namespace.as_str(), att.name.as_str()),
        ("prod", "web-0")
    );
    assert!(att.ips.is_empty() && att.netns.is_empty());
}

#[test]
fn del_does_not_hold_up_teardown_when_the_agent_hangs() {
    let agent = FakeAgent::start(|_| (Duration::from_secs(6), Response::ok()));
    let run = run_plugin(&pod_env("DEL"), &with_prev(&agent.socket));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""));
    assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
}

#[test]
fn check_asks_the_agent_and_reports_its_verdict() {
    let agent = FakeAgent::start(|r| match r {
        Request::Check(a) if a.name == "web-0" => (Duration::ZERO, Response::ok()),
        _ => (Duration::ZERO, Response::error(100, "unexpected", "")),
    });
    let run = run_plugin(&pod_env("CHECK"), &with_prev(&agent.socket));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:?}");

    let agent = FakeAgent::start(|_| {
        (
            Duration::ZERO,
            Response::error(100, "10.99.0.2 is missing from inet nftpol", ""),
        )
    });
    let run = run_plugin(&pod_env("CHECK"), &with_prev(&agent.socket));
    assert_eq!(run.status, 1);
    assert_eq!(run.json()["msg"], "10.99.0.2 is missing from inet nftpol");
}

#[test]
fn version_lists_the_supported_spec_versions() {
    let run = run_plugin(&pod_env("VERSION"), r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(run.status, 0);
    assert_eq!(
        run.json(),
        serde_json::json!({
            "cniVersion": "1.1.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        })
    );
}

#[test]
fn status_is_ready_only_when_the_agent_says_so() {
    let ready = FakeAgent::ready();
    let run = run_plugin(&pod_env("STATUS"), &stdin(&ready.socket, "1.1.0", ""));
    assert_eq!((run.status, run.stdout.as_str()), (0, ""));
    assert!(matches!(ready.requests().as_slice(), [Request::Status]));

    let syncing =
        FakeAgent::start(|_| (Duration::ZERO, Response::error(11, "caches not synced", "")));
    let run = run_plugin(&pod_env("STATUS"), &stdin(&syncing.socket, "1.1.0", ""));
    assert_eq!(run.status, 1);
    assert_eq!(run.json()["code"], 50);

    let dir = tempfile::tempdir().unwrap();
    let run = run_plugin(
        &pod_env("STATUS"),
        &stdin(&dir.path().join("x.sock"), "1.1.0", ""),
    );
    assert_eq!(run.json()["code"], 50);
}

#[test]
fn gc_forwards_the_valid_attachments_under_both_keys() {
    let agent = FakeAgent::ready();
    let attachments =
        r#"[{"containerID":"aaa","ifname":"eth0"},{"containerID":"bbb","ifname":"eth0"}]"#;
    let conf = stdin(
        &agent.socket,
        "1.1.0",
        &format!(
            r#","cni.dev/valid-attachments":{attachments},"cni.dev/attachments":{attachments}"#
        ),
    );
    let env = vec![
        ("CNI_COMMAND".to_string(), "GC".to_string()),
        ("CNI_PATH".to_string(), "/opt/cni/bin".to_string()),
    ];
    let run = run_plugin(&env, &conf);
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:?}");
    let reqs = agent.requests();
    let [Request::Gc { valid }] = reqs.as_slice() else {
        panic!("{reqs:?}")
    };
    let ids: Vec<_> = valid.iter().map(|a| a.container_id.as_str()).collect();
    assert_eq!(ids, ["aaa", "bbb"]);
}

#[test]
fn with_verbose_logging_stdout_still_holds_only_the_result() {
    let agent = FakeAgent::ready();
    let conf = stdin(
        &agent.socket,
        "1.0.0",
        &format!(r#","logLevel":"trace","prevResult":{BRIDGE_RESULT}"#),
    );
    let run = run_plugin(&pod_env("ADD"), &conf);
    assert_eq!(run.stdout, format!("{BRIDGE_RESULT}\n"));
    assert!(
        run.stderr.contains(
            "INFO nftpol-cni ADD container=3f6940ab5ab4: pod isolation committed pod=\"prod/web-0\""
        ),
        "{}",
        run.stderr
    );

    // Errors too: the error object on stdout, the log line elsewhere.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cni.log");
    let conf = stdin(
        &dir.path().join("none.sock"),
        "1.0.0",
        &format!(
            r#","logLevel":"debug","logFile":"{}","prevResult":{BRIDGE_RESULT}"#,
            log.display()
        ),
    );
    let run = run_plugin(&pod_env("ADD"), &conf);
    assert_eq!(run.json()["code"], 11);
    assert_eq!(run.stderr, "");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ERROR nftpol-cni ADD") && logged.contains("code=11"),
        "{logged}"
    );
}

#[test]
fn spec_errors_for_bad_environment_and_config() {
    let agent = FakeAgent::ready();
    type Env = Vec<(String, String)>;
    let cases: Vec<(Env, String, u64)> = vec![
        // No CNI_COMMAND.
        (vec![], with_prev(&agent.socket), 4),
        // No CNI_CONTAINERID for ADD.
        (
            pod_env("ADD")
                .into_iter()
                .filter(|(k, _)| k != "CNI_CONTAINERID")
                .collect(),
            with_prev(&agent.socket),
            4,
        ),
        // Unknown CNI_ARGS key without IgnoreUnknown.
        (
            pod_env("ADD")
                .into_iter()
                .map(|(k, v)| {
                    if k == "CNI_ARGS" {
                        (k, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;X=1".into())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            with_prev(&agent.socket),
            4,
        ),
        // Not JSON.
        (pod_env("ADD"), "cniVersion: 1.0.0".into(), 6),
        // A version we do not speak.
        (pod_env("ADD"), stdin(&agent.socket, "0.2.0", ""), 1),
        // CHECK is not in 0.3.1.
        (
            pod_env("CHECK"),
            stdin(
                &agent.socket,
                "0.3.1",
                &format!(r#","prevResult":{BRIDGE_RESULT}"#),
            ),
            1,
        ),
        // A bad value for one of our keys.
        (
            pod_env("ADD"),
            stdin(&agent.socket, "1.0.0", r#","timeoutSeconds":-1"#),
            7,
        ),
    ];
    for (env, conf, code) in cases {
        let run = run_plugin(&env, &conf);
        assert_eq!(run.status, 1, "{run:?}");
        assert_eq!(run.json()["code"], code, "{run:?}");
    }
    assert!(agent.requests().is_empty());
}
