//! The chained CNI plugin: a thin synchronous shell that turns one CNI invocation into one
//! agent request, so that no pod starts before its isolation is in the kernel.
//!
//! [`run`] reads the process environment and stdin and writes stdout; [`run_with`] does the
//! same over explicit inputs and an [`AgentClient`], which is what the unit tests drive.
//!
//! | command | agent request | agent down / slow | prints on success |
//! |---|---|---|---|
//! | ADD | `add` (waits up to `timeoutSeconds`) | error 11, exit 1: the runtime retries | `prevResult`, unchanged |
//! | DEL | `del` (best effort, at most 2 s) | success | nothing |
//! | CHECK | `check` | error 11 | nothing |
//! | STATUS | `status` | error 50 | nothing |
//! | GC | `gc` with the valid attachments | success | nothing |
//! | VERSION | none | - | supported versions |
//!
//! Errors the agent reports pass through with its code. Logs go to stderr or `logFile`,
//! never to stdout.

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod log;
pub mod result;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::protocol::{Attachment, AttachmentId, Request, Response};
pub use agent::{AgentClient, AgentError, UnixSocketClient};
pub use config::{LATEST_VERSION, NetConf, SUPPORTED_VERSIONS, Version};
pub use env::{CniArgs, CniEnv, Command};
pub use error::{CniError, PluginError};

/// DEL never waits longer than this for the agent: it is only a hint (the agent also forgets
/// pods when the API server deletes them), and a slow DEL would hold up pod teardown.
pub const DEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one CNI invocation of the current process; returns the exit status.
///
/// For the static `nftpol-cni` binary and for the main `nftpol` binary when `CNI_COMMAND`
/// is set (call it before setting up anything else, and exit with its status).
pub fn run() -> i32 {
    let env = CniEnv::from_process();
    let mut stdin = Vec::new();
    let read = std::io::stdin().lock().read_to_end(&mut stdin);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let status = match read {
        Ok(_) => run_with(&env, &stdin, &mut out, &UnixSocketClient),
        Err(e) => {
            let err = PluginError::Decode {
                source: serde_json::Error::io(e),
            };
            report_early(&mut out, LATEST_VERSION, &err)
        }
    };
    let _ = out.flush();
    status
}

/// Runs one invocation over explicit inputs; returns the exit status (0 or 1).
pub fn run_with(
    env: &CniEnv,
    stdin: &[u8],
    stdout: &mut dyn Write,
    client: &dyn AgentClient,
) -> i32 {
    let command = match env.command() {
        Ok(c) => c,
        Err(e) => return report_early(stdout, &config::lenient_version(stdin), &e),
    };
    if command == Command::Version {
        return match write_json(stdout, &version_info()) {
            Ok(()) => 0,
            Err(e) => report_early(stdout, LATEST_VERSION, &e),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return report_early(stdout, &config::lenient_version(stdin), &e),
    };
    let logger = log::Logger::new(
        conf.log_level.to_tracing(),
        conf.log_file.as_deref(),
        command.as_str(),
        env.container_id.as_deref(),
    );
    tracing::subscriber::with_default(logger, || {
        let outcome = dispatch(command, env, &conf, client).and_then(|out| match out {
            Some(bytes) => stdout
                .write_all(&bytes)
                .and_then(|()| stdout.write_all(b"\n"))
                .map_err(PluginError::Stdout),
            None => Ok(()),
        });
        match outcome {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(code = e.code(), "{e}");
                let _ = write_json(stdout, &e.to_cni_error(conf.error_version()));
                1
            }
        }
    })
}

/// Reports an error found before the config (and so the log settings) is known: the error
/// object on stdout, a line on stderr.
fn report_early(stdout: &mut dyn Write, version: &str, e: &PluginError) -> i32 {
    let logger = log::Logger::new(tracing::Level::WARN, None, "-", None);
    tracing::subscriber::with_default(logger, || tracing::error!(code = e.code(), "{e}"));
    let _ = write_json(stdout, &e.to_cni_error(version));
    1
}

fn write_json(stdout: &mut dyn Write, value: &impl Serialize) -> Result<(), PluginError> {
    let mut bytes = serde_json::to_vec(value).map_err(|e| PluginError::Stdout(e.into()))?;
    bytes.push(b'\n');
    stdout.write_all(&bytes).map_err(PluginError::Stdout)
}

#[derive(Serialize)]
struct VersionInfo {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(rename = "supportedVersions")]
    supported_versions: [&'static str; 5],
}

fn version_info() -> VersionInfo {
    VersionInfo {
        cni_version: LATEST_VERSION,
        supported_versions: SUPPORTED_VERSIONS,
    }
}

/// Runs `command`; `Ok(Some(bytes))` is the result to print.
fn dispatch(
    command: Command,
    env: &CniEnv,
    conf: &NetConf,
    client: &dyn AgentClient,
) -> Result<Option<Vec<u8>>, PluginError> {
    let version = conf.version()?;
    match command {
        Command::Add => add(env, conf, version, client).map(Some),
        Command::Del => {
            del(env, conf, client)?;
            Ok(None)
        }
        Command::Check => {
            require_version(command, version, version.has_check())?;
            check(env, conf, client)?;
            Ok(None)
        }
        Command::Status => {
            require_version(command, version, version.has_status_and_gc())?;
            status(conf, client)?;
            Ok(None)
        }
        Command::Gc => {
            require_version(command, version, version.has_status_and_gc())?;
            gc(conf, client)?;
            Ok(None)
        }
        Command::Version => Ok(None), // answered before the config is parsed
    }
}

fn require_version(command: Command, version: Version, ok: bool) -> Result<(), PluginError> {
    if ok {
        Ok(())
    } else {
        Err(PluginError::CommandNotInVersion {
            command: command.as_str(),
            version: version.as_str(),
        })
    }
}

/// Builds the attachment from the environment, `CNI_ARGS` and `prevResult`.
fn attachment(
    env: &CniEnv,
    command: Command,
    prev: Option<&serde_json::value::RawValue>,
    strict: bool,
) -> Result<(Attachment, Option<String>), PluginError> {
    let (container_id, ifname, netns) = env.require(command, strict)?;
    let args = match env.args.as_deref().map(env::parse_cni_args).transpose() {
        Ok(a) => a.unwrap_or_default(),
        Err(e) if strict => return Err(e),
        Err(e) => {
            tracing::warn!("ignoring CNI_ARGS: {e}");
            CniArgs::default()
        }
    };
    let (namespace, name) = match (args.pod_namespace, args.pod_name) {
        (Some(ns), Some(n)) => (ns, n),
        (ns, n) if !strict => (ns.unwrap_or_default(), n.unwrap_or_default()),
        _ => {
            return Err(PluginError::InvalidArgs {
                reason: "K8S_POD_NAMESPACE and K8S_POD_NAME are required: nftpol enforces \
                         policies on Kubernetes pods"
                    .into(),
            });
        }
    };
    let network = match prev.map(|p| result::inspect(p, &ifname)).transpose() {
        Ok(n) => n,
        Err(e) if strict => return Err(e),
        Err(e) => {
            tracing::warn!("ignoring prevResult: {e}");
            None
        }
    };
    let (ips, host_interface, prev_version) = match network {
        Some(n) => (n.ips, n.host_interface, n.cni_version),
        None => (Vec::new(), None, None),
    };
    Ok((
        Attachment {
            id: AttachmentId {
                container_id,
                ifname,
            },
            namespace,
            name,
            uid: args.pod_uid,
            netns: netns.unwrap_or_default(),
            host_interface,
            ips,
        },
        prev_version,
    ))
}

/// Turns the agent's answer into our outcome: errors pass through with their code.
fn accept(resp: Response) -> Result<(), PluginError> {
    if resp.ok {
        return Ok(());
    }
    Err(match resp.error {
        Some(e) => PluginError::Agent {
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        None => PluginError::Agent {
            code: error::code::AGENT_REFUSED,
            msg: "nftpol agent refused the request without a reason".into(),
            details: String::new(),
        },
    })
}

fn add(
    env: &CniEnv,
    conf: &NetConf,
    version: Version,
    client: &dyn AgentClient,
) -> Result<Vec<u8>, PluginError> {
    let prev = conf
        .prev_result
        .as_deref()
        .ok_or(PluginError::NoPrevResult)?;
    let (att, prev_version) = attachment(env, Command::Add, Some(prev), true)?;
    if att.ips.is_empty() {
        return Err(PluginError::InvalidConfig {
            field: "prevResult.ips".into(),
            reason: "no pod address: nftpol must come after the plugin that assigns the \
                     pod's IPs"
                .into(),
        });
    }
    let start = Instant::now();
    let pod = format!("{}/{}", att.namespace, att.name);
    let ips = format!("{:?}", att.ips);
    let host_interface = att.host_interface.clone().unwrap_or_default();
    let resp = client
        .call(&conf.socket, &Request::Add(att), conf.timeout)
        .map_err(|source| PluginError::AgentUnreachable {
            socket: conf.socket.clone(),
            source,
        })?;
    accept(resp)?;
    tracing::info!(
        pod,
        ips,
        host_interface,
        ms = start.elapsed().as_millis() as u64,
        "pod isolation committed"
    );
    result::render(prev, prev_version.as_deref(), version)
}

fn del(env: &CniEnv, conf: &NetConf, client: &dyn AgentClient) -> Result<(), PluginError> {
    let (att, _) = attachment(env, Command::Del, conf.prev_result.as_deref(), false)?;
    let timeout = conf.timeout.min(DEL_TIMEOUT);
    match client.call(&conf.socket, &Request::Del(att), timeout) {
        Ok(resp) => {
            if let Err(e) = accept(resp) {
                tracing::warn!("agent could not forget the pod (the agent's resync will): {e}");
            }
        }
        Err(e) => tracing::warn!(
            "nftpol agent not reachable at {}: {e}; DEL succeeds anyway",
            conf.socket.display()
        ),
    }
    Ok(())
}

fn check(env: &CniEnv, conf: &NetConf, client: &dyn AgentClient) -> Result<(), PluginError> {
    let prev = conf
        .prev_result
        .as_deref()
        .ok_or(PluginError::NoPrevResult)?;
    let (att, _) = attachment(env, Command::Check, Some(prev), true)?;
    let resp = client
        .call(&conf.socket, &Request::Check(att), conf.timeout)
        .map_err(|source| PluginError::AgentUnreachable {
            socket: conf.socket.clone(),
            source,
        })?;
    accept(resp)
}

fn status(conf: &NetConf, client: &dyn AgentClient) -> Result<(), PluginError> {
    let not_ready = |code, msg| PluginError::NotReady {
        socket: conf.socket.clone(),
        code,
        msg,
    };
    let resp = client
        .call(&conf.socket, &Request::Status, conf.timeout)
        .map_err(|e| not_ready(error::code::NOT_AVAILABLE, format!("not reachable: {e}")))?;
    if resp.ok {
        return Ok(());
    }
    let (code, msg) = match resp.error {
        Some(e) if e.code == error::code::NOT_AVAILABLE_LIMITED => (e.code, e.msg),
        Some(e) => (error::code::NOT_AVAILABLE, e.msg),
        None => (error::code::NOT_AVAILABLE, "no reason given".into()),
    };
    Err(not_ready(code, msg))
}

fn gc(conf: &NetConf, client: &dyn AgentClient) -> Result<(), PluginError> {
    let valid = conf.valid_attachments.clone();
    let count = valid.len();
    match client.call(&conf.socket, &Request::Gc { valid }, conf.timeout) {
        Ok(resp) => accept(resp)?,
        Err(e) => tracing::warn!(
            "nftpol agent not reachable at {}: {e}; skipping GC (the agent resyncs on start)",
            conf.socket.display()
        ),
    }
    tracing::debug!(valid = count, "gc forwarded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::Path;

    type Answer = Box<dyn Fn(&Request) -> Result<Response, AgentError>>;

    /// A fake agent: records requests, answers from a closure.
    struct Fake {
        seen: RefCell<Vec<(Request, Duration)>>,
        answer: Answer,
    }

    impl Fake {
        fn new(answer: impl Fn(&Request) -> Result<Response, AgentError> + 'static) -> Fake {
            Fake {
                seen: RefCell::new(Vec::new()),
                answer: Box::new(answer),
            }
        }
        fn ok() -> Fake {
            Fake::new(|_| Ok(Response::ok()))
        }
        fn down() -> Fake {
            Fake::new(|_| {
                Err(AgentError::Refused(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )))
            })
        }
    }

    impl AgentClient for Fake {
        fn call(
            &self,
            _socket: &Path,
            request: &Request,
            timeout: Duration,
        ) -> Result<Response, AgentError> {
            self.seen.borrow_mut().push((request.clone(), timeout));
            (self.answer)(request)
        }
    }

    const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"f6:7d:ab:0c:31:36"},{"name":"vethed626701","mac":"d2:22:cc:49:64:ce"},{"name":"eth0","mac":"e2:9c:e9:64:9c:d2","sandbox":"/run/netns/p"}],"ips":[{"interface":2,"address":"10.99.0.2/24","gateway":"10.99.0.1"}],"dns":{}}"#;

    fn env(command: &str) -> CniEnv {
        let vars: HashMap<&str, &str> = HashMap::from([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee",
            ),
        ]);
        CniEnv::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
    }

    fn conf(version: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"cbr0","type":"nftpol","socket":"/s","timeoutSeconds":3{extra}}}"#
        )
    }

    fn invoke(env: &CniEnv, stdin: &str, fake: &Fake) -> (i32, String) {
        let mut out = Vec::new();
        let status = run_with(env, stdin.as_bytes(), &mut out, fake);
        (status, String::from_utf8(out).unwrap())
    }

    fn error_of(out: &str) -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    #[test]
    fn add_sends_the_pod_and_echoes_prev_result() {
        let fake = Fake::ok();
        let stdin = conf("1.0.0", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&env("ADD"), &stdin, &fake);
        assert_eq!(status, 0, "{out}");
        assert_eq!(out, format!("{PREV}\n"));
        let seen = fake.seen.borrow();
        let (Request::Add(att), timeout) = &seen[0] else {
            panic!("{seen:?}")
        };
        assert_eq!(*timeout, Duration::from_secs(3));
        assert_eq!(
            (att.namespace.as_str(), att.name.as_str()),
            ("prod", "web-0")
        );
        assert_eq!(att.id.container_id, "c0ffee");
        assert_eq!(att.netns, "/run/netns/p");
        assert_eq!(att.host_interface.as_deref(), Some("vethed626701"));
        assert_eq!(
            att.ips,
            vec!["10.99.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn add_without_prev_result_is_refused_before_asking_the_agent() {
        let fake = Fake::ok();
        let (status, out) = invoke(&env("ADD"), &conf("1.0.0", ""), &fake);
        assert_eq!(status, 1);
        let e = error_of(&out);
        assert_eq!(e["code"], 7);
        assert_eq!(
            e["msg"],
            "no prevResult: nftpol must be chained after an interface plugin"
        );
        assert!(fake.seen.borrow().is_empty());
    }

    #[test]
    fn add_with_agent_down_is_try_again_later() {
        let stdin = conf("0.4.0", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&env("ADD"), &stdin, &Fake::down());
        assert_eq!(status, 1);
        let e = error_of(&out);
        assert_eq!(e["code"], 11);
        assert_eq!(e["cniVersion"], "0.4.0");
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .starts_with("nftpol agent not reachable at /s: connection refused"),
            "{e}"
        );
    }

    #[test]
    fn agent_errors_pass_through_with_their_code() {
        let fake = Fake::new(|_| Ok(Response::error(7, "pod prod/web-0 unknown", "not in cache")));
        let stdin = conf("1.0.0", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&env("ADD"), &stdin, &fake);
        assert_eq!(status, 1);
        let e = error_of(&out);
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str(), e["details"].as_str()),
            (
                Some(7),
                Some("pod prod/web-0 unknown"),
                Some("not in cache")
            )
        );
    }

    #[test]
    fn add_without_pod_identity_is_invalid_env() {
        let mut e = env("ADD");
        e.args = Some("IgnoreUnknown=1".into());
        let stdin = conf("1.0.0", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&e, &stdin, &Fake::ok());
        assert_eq!(status, 1);
        assert_eq!(error_of(&out)["code"], 4);
    }

    #[test]
    fn del_succeeds_silently_when_the_agent_is_down_or_the_args_are_odd() {
        let fake = Fake::down();
        let mut e = env("DEL");
        e.netns = None;
        e.args = Some("WHAT=ever".into());
        let (status, out) = invoke(&e, &conf("1.0.0", ""), &fake);
        assert_eq!((status, out.as_str()), (0, ""));
        let seen = fake.seen.borrow();
        assert!(
            matches!(&seen[0], (Request::Del(a), t) if a.id.container_id == "c0ffee" && *t == Duration::from_secs(2))
        );
    }

    #[test]
    fn del_ignores_agent_errors() {
        let fake = Fake::new(|_| Ok(Response::error(11, "busy", "")));
        let (status, out) = invoke(&env("DEL"), &conf("1.1.0", ""), &fake);
        assert_eq!((status, out.as_str()), (0, ""));
    }

    #[test]
    fn check_needs_0_4_0_and_reports_agent_errors() {
        let stdin = conf("0.3.1", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&env("CHECK"), &stdin, &Fake::ok());
        assert_eq!((status, error_of(&out)["code"].as_u64()), (1, Some(1)));

        let fake = Fake::new(|_| {
            Ok(Response::error(
                100,
                "pod 10.99.0.2 missing from the table",
                "",
            ))
        });
        let stdin = conf("1.0.0", &format!(r#","prevResult":{PREV}"#));
        let (status, out) = invoke(&env("CHECK"), &stdin, &fake);
        assert_eq!(status, 1);
        assert_eq!(error_of(&out)["code"], 100);
        assert!(matches!(&fake.seen.borrow()[0].0, Request::Check(a) if a.ips.len() == 1));

        let (status, out) = invoke(&env("CHECK"), &stdin, &Fake::ok());
        assert_eq!((status, out.as_str()), (0, ""));
    }

    #[test]
    fn status_maps_not_ready_and_unreachable_to_50() {
        let (status, out) = invoke(&env("STATUS"), &conf("1.1.0", ""), &Fake::ok());
        assert_eq!((status, out.as_str()), (0, ""));
        let fake = Fake::new(|_| Ok(Response::error(11, "caches not synced", "")));
        let (status, out) = invoke(&env("STATUS"), &conf("1.1.0", ""), &fake);
        let e = error_of(&out);
        assert_eq!((status, e["code"].as_u64()), (1, Some(50)));
        assert_eq!(
            e["msg"],
            "nftpol agent at /s is not ready: caches not synced"
        );
        let (_, out) = invoke(&env("STATUS"), &conf("1.1.0", ""), &Fake::down());
        assert_eq!(error_of(&out)["code"], 50);
        let (_, out) = invoke(&env("STATUS"), &conf("1.0.0", ""), &Fake::ok());
        assert_eq!(error_of(&out)["code"], 1);
    }

    #[test]
    fn gc_forwards_attachments_and_tolerates_a_missing_agent() {
        let fake = Fake::ok();
        let stdin = conf(
            "1.1.0",
            r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]"#,
        );
        let (status, _) = invoke(&env("GC"), &stdin, &fake);
        assert_eq!(status, 0);
        assert!(matches!(&fake.seen.borrow()[0].0, Request::Gc { valid } if valid.len() == 1));
        let (status, out) = invoke(&env("GC"), &stdin, &Fake::down());
        assert_eq!((status, out.as_str()), (0, ""));
    }

    #[test]
    fn version_needs_no_config() {
        let (status, out) = invoke(&env("VERSION"), "", &Fake::down());
        assert_eq!(status, 0);
        let v = error_of(&out);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn broken_input_gets_a_spec_error_with_the_requested_version() {
        let (status, out) = invoke(&env("ADD"), "{\"cniVersion\":", &Fake::ok());
        let e = error_of(&out);
        assert_eq!((status, e["code"].as_u64()), (1, Some(6)));
        assert_eq!(e["cniVersion"], "1.1.0");
        let (_, out) = invoke(&env("ADD"), r#"{"cniVersion":"9.9.9"}"#, &Fake::ok());
        let e = error_of(&out);
        assert_eq!(
            (e["code"].as_u64(), e["cniVersion"].as_str()),
            (Some(1), Some("9.9.9"))
        );
        let (_, out) = invoke(&CniEnv::default(), "{}", &Fake::ok());
        assert_eq!(error_of(&out)["code"], 4);
    }
}
