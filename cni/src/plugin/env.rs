//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`, read once into plain data so the plugin logic never touches the
//! process environment (tests pass a map).

use super::error::PluginError;

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The `CNI_*` variables of one invocation. Empty values count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> CniEnv {
        CniEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `lookup` (e.g. a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> CniEnv {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        CniEnv {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }

    pub fn command(&self) -> Result<Command, PluginError> {
        let raw = self.command.as_deref().ok_or(PluginError::MissingEnv {
            var: "CNI_COMMAND",
            command: "any CNI operation",
        })?;
        Command::parse(raw).ok_or_else(|| PluginError::UnknownCommand(raw.to_string()))
    }

    /// `CNI_CONTAINERID`, `CNI_IFNAME` (and `CNI_NETNS` when `with_netns`), required by
    /// ADD, CHECK and DEL.
    pub fn require(
        &self,
        command: Command,
        with_netns: bool,
    ) -> Result<(String, String, Option<String>), PluginError> {
        let missing = |var| PluginError::MissingEnv {
            var,
            command: command.as_str(),
        };
        let container_id = self
            .container_id
            .clone()
            .ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ifname = self.ifname.clone().ok_or_else(|| missing("CNI_IFNAME"))?;
        if with_netns && self.netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        Ok((container_id, ifname, self.netns.clone()))
    }
}

/// The keys of `CNI_ARGS` that matter to nftpol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`) like the reference Go library: unknown keys are an error
/// unless `IgnoreUnknown` is `1`/`true` (containerd and CRI-O always set it).
pub fn parse_cni_args(raw: &str) -> Result<CniArgs, PluginError> {
    let mut pairs = Vec::new();
    for part in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| PluginError::InvalidArgs {
                reason: format!("{part:?} is not KEY=VALUE"),
            })?;
        pairs.push((k, v));
    }
    let ignore_unknown = pairs.iter().any(|(k, v)| {
        *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    for (k, v) in pairs {
        let value = (!v.is_empty()).then(|| v.to_string());
        match k {
            "K8S_POD_NAMESPACE" => args.pod_namespace = value,
            "K8S_POD_NAME" => args.pod_name = value,
            "K8S_POD_UID" => args.pod_uid = value,
            "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = value,
            "IgnoreUnknown" => {}
            other => unknown.push(other),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(PluginError::InvalidArgs {
            reason: format!(
                "unknown keys {} (set IgnoreUnknown=1 to allow them)",
                unknown.join(", ")
            ),
        });
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_style_args_parse() {
        let a = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.pod_uid.as_deref(), Some("1234-5678"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown_anywhere_in_the_list() {
        let e = parse_cni_args("K8S_POD_NAME=a;FOO=bar").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("FOO"), "{e}");
        let a = parse_cni_args("FOO=bar;K8S_POD_NAME=a;IgnoreUnknown=true").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("a"));
        assert!(parse_cni_args("FOO=bar;IgnoreUnknown=0").is_err());
    }

    #[test]
    fn values_may_contain_equals_and_empty_segments_are_skipped() {
        let a = parse_cni_args(";K8S_POD_NAME=a=b;;").unwrap();
        assert_eq!(a.pod_name.as_deref(), Some("a=b"));
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert!(parse_cni_args("K8S_POD_NAME").is_err());
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let env = CniEnv::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some(String::new()),
            _ => None,
        });
        assert_eq!(env.command().unwrap(), Command::Add);
        let e = env.require(Command::Add, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable CNI_NETNS is required for ADD"
        );
        assert_eq!(env.require(Command::Del, false).unwrap().0, "c1");
    }

    #[test]
    fn unknown_or_missing_command_is_invalid_env() {
        let env = CniEnv::from_lookup(|k| (k == "CNI_COMMAND").then(|| "add".to_string()));
        assert_eq!(env.command().unwrap_err().code(), 4);
        assert_eq!(CniEnv::default().command().unwrap_err().code(), 4);
    }
}
