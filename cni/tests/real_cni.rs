//! The real thing: Debian's `bridge` + `host-local` plugins, then ours, chained from a conflist
//! that `install-cni` edited, run the way libcni runs a conflist, inside throwaway network
//! namespaces (a "node" and a "pod"). Needs root; skips loudly otherwise.
//!
//! Address plan: bridge `cni0` with 10.99.0.0/24 and fd00:99::/64 in the node namespace; the
//! pod gets the first free address of each.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{FakeAgent, PLUGIN, Run, is_root, run_binary};
use nftpol_cni::install::{self, InstallOptions};
use nftpol_cni::protocol::Request;
use serde_json::{Value, json};

const SYSTEM_CNI: &str = "/usr/lib/cni";
const IP: &str = "/usr/sbin/ip";

/// A network namespace that is deleted when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!("nftpol-cni-{role}-{}", std::process::id());
        let _ = Command::new(IP).args(["netns", "del", &name]).status(); // stale from a crash
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// `ip -j -d link show dev <dev>` inside this namespace.
    fn link(&self, dev: &str) -> Option<Value> {
        let out = Command::new(IP)
            .args(["-n", &self.0, "-j", "-d", "link", "show", "dev", dev])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().and_then(|a| a.first().cloned())
    }

    fn addresses(&self, dev: &str) -> Vec<String> {
        let out = Command::new(IP)
            .args(["-n", &self.0, "-j", "addr", "show", "dev", dev])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] == "global")
            .map(|a| a["local"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new(IP).args(args).status().unwrap();
    assert!(st.success(), "ip {args:?} failed");
}

/// Plays libcni for one conflist: each plugin gets its own config with the list's `name`
/// and `cniVersion` and the previous result as `prevResult`.
struct Runtime<'a> {
    conflist: Value,
    node: &'a Netns,
    cni_path: String,
    env: Vec<(String, String)>,
}

impl Runtime<'_> {
    fn plugin_binary(&self, kind: &str) -> PathBuf {
        self.cni_path
            .split(':')
            .map(|d| Path::new(d).join(kind))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {kind} not in {}", self.cni_path))
    }

    fn exec(&self, command: &str, plugin: &Value, prev: Option<&Value>) -> Run {
        let mut conf = plugin.as_object().unwrap().clone();
        conf.insert("name".into(), self.conflist["name"].clone());
        conf.insert("cniVersion".into(), self.conflist["cniVersion"].clone());
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut env = self.env.clone();
        env.push(("CNI_COMMAND".into(), command.into()));
        env.push(("CNI_PATH".into(), self.cni_path.clone()));
        let binary = self.plugin_binary(plugin["type"].as_str().unwrap());
        run_binary(
            &binary,
            &env,
            &Value::Object(conf).to_string(),
            &[IP, "netns", "exec", &self.node.0],
        )
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"].as_array().unwrap().clone()
    }

    /// ADD through the list; returns each plugin's run (stops at the first failure).
    fn add(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let run = self.exec("ADD", &plugin, prev.as_ref());
            let failed = run.status != 0;
            if !failed {
                prev = Some(run.json());
            }
            runs.push(run);
            if failed {
                break;
            }
        }
        runs
    }

    fn check(&self, result: &Value) -> Vec<Run> {
        self.plugins()
            .iter()
            .map(|p| self.exec("CHECK", p, Some(result)))
            .collect()
    }

    fn del(&self, result: &Value) -> Vec<Run> {
        self.plugins()
            .iter()
            .rev()
            .map(|p| self.exec("DEL", p, Some(result)))
            .collect()
    }
}

#[test]
fn chained_after_real_bridge_the_agent_learns_the_pod_ips_and_its_host_veth() {
    if !is_root() {
        eprintln!(
            "\n*** SKIPPED chained_after_real_bridge...: needs root (network namespaces, real CNI plugins) ***\n"
        );
        return;
    }
    assert!(
        Path::new(SYSTEM_CNI).join("bridge").exists(),
        "containernetworking-plugins missing in {SYSTEM_CNI}"
    );
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let agent = FakeAgent::ready();
    let tmp = tempfile::tempdir().unwrap();
    let (conf_dir, bin_dir) = (tmp.path().join("net.d"), tmp.path().join("bin"));
    fs::create_dir(&conf_dir).unwrap();
    fs::create_dir(&bin_dir).unwrap();

    // The node's network: bridge + host-local, as in the field notes.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "nftpol-cni-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": tmp.path().join("ipam").display().to_string(),
                "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        }]
    });
    fs::write(
        conf_dir.join("10-bridge.conflist"),
        serde_json::to_string_pretty(&conflist).unwrap(),
    )
    .unwrap();
    install::install(&InstallOptions {
        source_binary: PLUGIN.into(),
        bin_dir: bin_dir.clone(),
        conf_dir: conf_dir.clone(),
        socket: agent.socket.clone(),
        timeout_seconds: 5,
        ..InstallOptions::default()
    })
    .unwrap();
    let installed: Value =
        serde_json::from_slice(&fs::read(conf_dir.join("10-bridge.conflist")).unwrap()).unwrap();
    assert_eq!(installed["plugins"][1]["type"], "nftpol");

    let container_id = format!("nftpolcnitest{}", std::process::id());
    let runtime = Runtime {
        conflist: installed,
        node: &node,
        cni_path: format!("{}:{SYSTEM_CNI}", bin_dir.display()),
        env: vec![
            ("CNI_CONTAINERID".into(), container_id.clone()),
            ("CNI_NETNS".into(), pod.path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={container_id}"
                ),
            ),
        ],
    };

    let runs = runtime.add();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in &runs {
        assert_eq!(r.status, 0, "{r:?}");
    }
    let (bridge_result, final_result) = (runs[0].json(), runs[1].json());
    assert_eq!(
        final_result, bridge_result,
        "nftpol must pass the bridge's result through"
    );
    // Byte for byte: exactly the prevResult text this runtime passed in.
    assert_eq!(
        runs[1].stdout,
        format!("{}\n", serde_json::to_string(&bridge_result).unwrap())
    );

    // What the agent was told.
    let reqs = agent.requests();
    let [Request::Add(att)] = reqs.as_slice() else {
        panic!("{reqs:?}")
    };
    assert_eq!(
        (att.namespace.as_str(), att.name.as_str()),
        ("prod", "web-0")
    );
    assert_eq!(att.id.container_id, container_id);
    assert_eq!(att.netns, pod.path());
    let mut got_ips: Vec<String> = att.ips.iter().map(|i| i.to_string()).collect();
    got_ips.sort();
    let mut pod_ips = pod.addresses("eth0");
    pod_ips.sort();
    assert_eq!(
        got_ips, pod_ips,
        "the IPs really configured on the pod's eth0"
    );
    assert_eq!(got_ips.len(), 2);

    // The host interface exists in the node namespace, is a veth enslaved to the bridge,
    // and its peer is the pod's eth0.
    let host_if = att.host_interface.clone().expect("no host interface");
    assert_ne!(host_if, "cni0");
    let link = node
        .link(&host_if)
        .unwrap_or_else(|| panic!("{host_if} not in the node namespace"));
    assert_eq!(link["linkinfo"]["info_kind"], "veth", "{link}");
    assert_eq!(link["master"], "cni0", "{link}");
    let eth0 = pod.link("eth0").unwrap();
    assert_eq!(
        link["link_index"], eth0["ifindex"],
        "peer of {host_if} is not the pod's eth0"
    );

    // CHECK through the whole chain.
    for r in runtime.check(&final_result) {
        assert_eq!((r.status, r.stdout.as_str()), (0, ""), "{r:?}");
    }
    assert!(
        matches!(agent.requests().last(), Some(Request::Check(a)) if a.host_interface.as_deref() == Some(host_if.as_str()))
    );

    // DEL in reverse order: we go first, then the bridge removes the veth.
    for r in runtime.del(&final_result) {
        assert_eq!((r.status, r.stdout.as_str()), (0, ""), "{r:?}");
    }
    assert!(
        matches!(agent.requests().last(), Some(Request::Del(a)) if a.id.container_id == container_id)
    );
    assert!(node.link(&host_if).is_none(), "{host_if} survived DEL");
}

#[test]
fn with_the_agent_down_the_chain_fails_with_try_again_and_cleans_up() {
    if !is_root() {
        eprintln!("\n*** SKIPPED with_the_agent_down...: needs root ***\n");
        return;
    }
    let node = Netns::new("node2");
    let pod = Netns::new("pod2");
    let tmp = tempfile::tempdir().unwrap();
    let runtime = Runtime {
        conflist: json!({
            "cniVersion": "1.0.0",
            "name": "nftpol-cni-test2",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": tmp.path().join("ipam").display().to_string(),
                        "ranges": [[{"subnet": "10.98.0.0/24"}]]
                    }
                },
                {"type": "nftpol-cni", "socket": tmp.path().join("nobody.sock").display().to_string()}
            ]
        }),
        node: &node,
        cni_path: format!(
            "{}:{SYSTEM_CNI}",
            Path::new(PLUGIN).parent().unwrap().display()
        ),
        env: vec![
            ("CNI_CONTAINERID".into(), "downtest".into()),
            ("CNI_NETNS".into(), pod.path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-1".into(),
            ),
        ],
    };
    let runs = runtime.add();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let e = runs[1].json();
    assert_eq!((runs[1].status, e["code"].as_u64()), (1, Some(11)), "{e}");
    // The runtime then tears down what was made; our DEL succeeds without an agent.
    let bridge_result = runs[0].json();
    for r in runtime.del(&bridge_result) {
        assert_eq!(r.status, 0, "{r:?}");
    }
    assert!(pod.link("eth0").is_none());
}
