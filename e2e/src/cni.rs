//! Playing the container runtime: running a CNI network configuration list, plugin by plugin.
//!
//! Debian ships no `cnitool`, and what we want to test is exactly what containerd and CRI-O do
//! (through libcni), so this module does it the same way: for ADD, each plugin of the conflist
//! in order gets its own configuration merged with the list's `name` and `cniVersion` and the
//! previous plugin's result as `prevResult`; the final result is cached. CHECK runs the plugins
//! in order with the cached result, DEL in reverse order with it. Plugins run inside the node's
//! namespace (`ip netns exec`), so bridges and host-side veths are made where a kubelet host
//! would have them. A failing plugin's CNI error JSON is parsed and returned with what it
//! printed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::cmd::{self, CmdError};
use crate::netns::Netns;

/// The CNI version of the conflists the harness writes: the highest Debian's plugins (1.1.1)
/// support.
pub const CNI_VERSION: &str = "1.0.0";

/// Where Debian's containernetworking-plugins live.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// A network configuration list (`.conflist`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    /// Plugin configurations in chain order, each with a `type`.
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// The conflist as JSON, as it would be written to `/etc/cni/net.d`.
    pub fn to_json(&self) -> Value {
        json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    /// The plugin's configuration as it goes to the plugin's stdin.
    fn plugin_stdin(&self, plugin: &Value, prev_result: Option<&Value>) -> Value {
        let mut conf = match plugin {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        match prev_result {
            Some(prev) => {
                conf.insert("prevResult".into(), prev.clone());
            }
            None => {
                conf.remove("prevResult");
            }
        }
        Value::Object(conf)
    }
}

/// Who a network attachment is for: the runtime's view of a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`: `/run/netns/<pod netns>`.
    pub netns_path: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

impl Attachment {
    /// `CNI_ARGS` as containerd and CRI-O pass it.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod_namespace, self.pod_name, self.container_id
        )
    }
}

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Check,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
        }
    }
}

impl std::fmt::Display for CniCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of a CNI operation; each names the plugin and the command.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cni {command}: plugin #{index} has no \"type\"")]
    MissingType { command: CniCommand, index: usize },
    #[error("cni {command}: plugin {plugin:?} not found in CNI_PATH {cni_path}")]
    PluginNotFound {
        command: CniCommand,
        plugin: String,
        cni_path: String,
    },
    #[error("cni {command}: running plugin {plugin}: {source}")]
    Exec {
        command: CniCommand,
        plugin: String,
        #[source]
        source: CmdError,
    },
    /// The plugin exited nonzero; see [`PluginFailure`].
    #[error("{0}")]
    Plugin(Box<PluginFailure>),
    #[error("cni {command}: plugin {plugin} printed no valid result: {source}; stdout: {stdout:?}")]
    BadResult {
        command: CniCommand,
        plugin: String,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cni ADD: the result has no {what}: {result}")]
    Incomplete { what: &'static str, result: String },
}

/// A plugin that exited nonzero. `code`, `msg` and `details` come from its CNI error JSON
/// when it printed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    pub command: CniCommand,
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
    pub details: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cni {}: plugin {} failed", self.command, self.plugin)?;
        if let Some(code) = self.code {
            write!(f, " with code {code}")?;
        }
        write!(f, ": {}", self.msg)?;
        if let Some(d) = &self.details {
            write!(f, " ({d})")?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "; stderr: {}", self.stderr.trim())?;
        }
        Ok(())
    }
}

/// How plugins are found and run.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `CNI_PATH`, searched in order for each plugin's `type`.
    pub cni_path: Vec<PathBuf>,
    /// Extra environment for every plugin (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Deadline for one plugin invocation.
    pub timeout: Duration,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            cni_path: vec![PathBuf::from(SYSTEM_CNI_DIR)],
            env: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Runtime {
    fn cni_path_var(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn find(&self, command: CniCommand, plugin: &str) -> Result<PathBuf, CniError> {
        if !plugin.contains('/') {
            for dir in &self.cni_path {
                let candidate = dir.join(plugin);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
        Err(CniError::PluginNotFound {
            command,
            plugin: plugin.to_string(),
            cni_path: self.cni_path_var(),
        })
    }

    /// ADD: every plugin in order; returns the final result (to cache for CHECK and DEL).
    pub fn add(&self, node: &Netns, conf: &ConfList, att: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for (index, plugin) in conf.plugins.iter().enumerate() {
            let result = self.invoke(
                node,
                CniCommand::Add,
                conf,
                index,
                plugin,
                att,
                prev.as_ref(),
            )?;
            prev = Some(result.unwrap_or(Value::Null));
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK: every plugin in order, each with the cached result.
    pub fn check(
        &self,
        node: &Netns,
        conf: &ConfList,
        att: &Attachment,
        cached: &Value,
    ) -> Result<(), CniError> {
        for (index, plugin) in conf.plugins.iter().enumerate() {
            self.invoke(
                node,
                CniCommand::Check,
                conf,
                index,
                plugin,
                att,
                Some(cached),
            )?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, each with the cached result when there is one.
    /// Keeps going after a failure (as runtimes retry DEL until it succeeds, every plugin
    /// must get its chance) and returns the first error.
    pub fn del(
        &self,
        node: &Netns,
        conf: &ConfList,
        att: &Attachment,
        cached: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for (index, plugin) in conf.plugins.iter().enumerate().rev() {
            if let Err(e) = self.invoke(node, CniCommand::Del, conf, index, plugin, att, cached) {
                tracing::warn!(error = %e, "cni DEL failed; continuing with the other plugins");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invoke(
        &self,
        node: &Netns,
        command: CniCommand,
        conf: &ConfList,
        index: usize,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or(CniError::MissingType { command, index })?;
        let binary = self.find(command, ty)?;
        let stdin = conf.plugin_stdin(plugin, prev).to_string();
        let mut c = node.command(&binary);
        // Like libcni: the runtime's environment plus the CNI variables.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                c.env_remove(key);
            }
        }
        c.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns_path)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_PATH", self.cni_path_var())
            .env("CNI_ARGS", att.cni_args());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let out = cmd::run(&mut c, Some(stdin.as_bytes()), self.timeout).map_err(|source| {
            CniError::Exec {
                command,
                plugin: ty.to_string(),
                source,
            }
        })?;
        tracing::debug!(plugin = ty, %command, container = %att.container_id, status = %out.status, "cni plugin ran");
        if !out.success() {
            let parsed: Option<Value> = serde_json::from_str(out.stdout.trim()).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            return Err(CniError::Plugin(Box::new(PluginFailure {
                command,
                plugin: ty.to_string(),
                code: parsed
                    .as_ref()
                    .and_then(|v| v.get("code"))
                    .and_then(Value::as_u64),
                msg: field("msg").unwrap_or_else(|| format!("exited with {}", out.status)),
                details: field("details"),
                stdout: out.stdout,
                stderr: out.stderr,
            })));
        }
        if command != CniCommand::Add {
            return Ok(None);
        }
        serde_json::from_str(out.stdout.trim())
            .map(Some)
            .map_err(|source| CniError::BadResult {
                command,
                plugin: ty.to_string(),
                stdout: out.stdout,
                source,
            })
    }
}

/// What the harness reads from an ADD result: the pod's addresses and the host-side veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultInfo {
    /// Addresses of the pod's interface, in result order.
    pub ips: Vec<std::net::IpAddr>,
    /// The host-side veth: the interface without `sandbox` that is not the bridge.
    pub host_veth: String,
}

/// Reads the addresses of `ifname` in the sandbox and the host veth (an interface without a
/// `sandbox` other than `bridge`) from a CNI 1.0 result.
pub fn parse_result(result: &Value, ifname: &str, bridge: &str) -> Result<ResultInfo, CniError> {
    let incomplete = |what| CniError::Incomplete {
        what,
        result: result.to_string(),
    };
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .ok_or_else(|| incomplete("interfaces"))?;
    let name_of = |i: &Value| {
        i.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let in_sandbox = |i: &Value| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let pod_if = interfaces
        .iter()
        .position(|i| in_sandbox(i) && name_of(i) == ifname)
        .ok_or_else(|| incomplete("sandbox interface"))?;
    let host_veth = interfaces
        .iter()
        .filter(|i| !in_sandbox(i) && name_of(i) != bridge)
        .map(name_of)
        .next()
        .ok_or_else(|| incomplete("host-side interface"))?;
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| incomplete("ips"))?
        .iter()
        .filter(|ip| {
            ip.get("interface")
                .and_then(Value::as_u64)
                .is_some_and(|i| usize::try_from(i).ok() == Some(pod_if))
        })
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect::<Vec<_>>();
    if ips.is_empty() {
        return Err(incomplete("address on the sandbox interface"));
    }
    Ok(ResultInfo { ips, host_veth })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_stdin_carries_list_name_version_and_prev_result() {
        let conf = ConfList {
            name: "net".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "bridge", "name": "ignored"})],
        };
        let prev = json!({"ips": []});
        let v = conf.plugin_stdin(&conf.plugins[0], Some(&prev));
        assert_eq!(v["name"], "net");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["type"], "bridge");
        assert_eq!(v["prevResult"], prev);
        assert!(
            conf.plugin_stdin(&conf.plugins[0], None)
                .get("prevResult")
                .is_none()
        );
    }

    #[test]
    fn result_parsing_finds_pod_ips_and_host_veth() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1234", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/p"}
            ],
            "ips": [
                {"interface": 2, "address": "10.244.0.2/24", "gateway": "10.244.0.1"},
                {"interface": 2, "address": "fd00:10:244::2/64"},
                {"interface": 0, "address": "10.9.9.9/24"}
            ]
        });
        let info = parse_result(&r, "eth0", "cni0").unwrap();
        assert_eq!(info.host_veth, "veth1234");
        assert_eq!(
            info.ips,
            vec![
                "10.244.0.2".parse::<std::net::IpAddr>().unwrap(),
                "fd00:10:244::2".parse().unwrap()
            ]
        );
        assert!(parse_result(&json!({"interfaces": []}), "eth0", "cni0").is_err());
    }

    #[test]
    fn cni_args_are_what_containerd_passes() {
        let a = Attachment {
            container_id: "abc".into(),
            netns_path: "/run/netns/x".into(),
            ifname: "eth0".into(),
            pod_namespace: "ns1".into(),
            pod_name: "a".into(),
        };
        assert_eq!(
            a.cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=abc"
        );
    }
}
