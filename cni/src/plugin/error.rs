//! Everything that can make a CNI invocation fail, and how each failure is reported to the
//! runtime: a well-known CNI error code and a JSON error object on stdout.
//!
//! The codes are the CNI spec's well-known ones, so runtimes react correctly: 11 ("try again
//! later") makes kubelet retry the sandbox instead of giving up, 50 tells a 1.1.0 runtime
//! that the network is not ready for ADDs yet.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

use super::agent::AgentError;

/// The spec's well-known error codes that this plugin uses.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid necessary environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
    pub const INVALID_ENV: u32 = 4;
    /// Failure to decode content (e.g. the network configuration on stdin).
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration failed a validation.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: a transient condition (here: the agent is not reachable yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADDs and existing containers may have limited
    /// connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// Plugin specific (100+): the agent refused without saying why.
    pub const AGENT_REFUSED: u32 = 100;
    /// Plugin specific: the result could not be written to stdout.
    pub const OUTPUT_FAILURE: u32 = 101;
}

/// Why an invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("incompatible CNI version {version:?}: nftpol supports {supported}")]
    IncompatibleVersion { version: String, supported: String },
    #[error("{command} is not defined for cniVersion {version}")]
    CommandNotInVersion {
        command: &'static str,
        version: &'static str,
    },
    #[error("environment variable {var} is required for {command}")]
    MissingEnv {
        var: &'static str,
        command: &'static str,
    },
    #[error("CNI_COMMAND {0:?} is not a CNI command (ADD, DEL, CHECK, VERSION, STATUS, GC)")]
    UnknownCommand(String),
    #[error("invalid CNI_ARGS: {reason}")]
    InvalidArgs { reason: String },
    #[error("cannot decode the network configuration on stdin: {source}")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("no prevResult: nftpol must be chained after an interface plugin")]
    NoPrevResult,
    #[error("nftpol agent not reachable at {}: {source}", .socket.display())]
    AgentUnreachable {
        socket: PathBuf,
        #[source]
        source: AgentError,
    },
    /// The agent answered with an error: its code and message pass through unchanged.
    #[error("{msg}")]
    Agent {
        code: u32,
        msg: String,
        details: String,
    },
    #[error("nftpol agent at {} is not ready: {msg}", .socket.display())]
    NotReady {
        socket: PathBuf,
        code: u32,
        msg: String,
    },
    #[error("cannot write the result to stdout: {0}")]
    Stdout(#[source] io::Error),
}

impl PluginError {
    /// The CNI error code reported to the runtime.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::IncompatibleVersion { .. } | PluginError::CommandNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            PluginError::MissingEnv { .. }
            | PluginError::UnknownCommand(_)
            | PluginError::InvalidArgs { .. } => code::INVALID_ENV,
            PluginError::Decode { .. } => code::DECODING_FAILURE,
            PluginError::InvalidConfig { .. } | PluginError::NoPrevResult => {
                code::INVALID_NETWORK_CONFIG
            }
            PluginError::AgentUnreachable { .. } => code::TRY_AGAIN_LATER,
            PluginError::Agent { code, .. } | PluginError::NotReady { code, .. } => *code,
            PluginError::Stdout(_) => code::OUTPUT_FAILURE,
        }
    }

    /// The long explanation (`details`) for the runtime's logs and `kubectl describe pod`.
    pub fn details(&self) -> String {
        match self {
            PluginError::AgentUnreachable { socket, .. } => format!(
                "the pod's network is held back until the nftpol agent on this node has \
                 programmed its isolation; the runtime retries. Check that the nftpol agent \
                 pod on this node is running and that its socket {} is mounted on the host",
                socket.display()
            ),
            PluginError::NoPrevResult => "add {\"type\": \"nftpol\"} to the plugins of a \
                 conflist, after the plugin that creates the pod's interface (nftpol \
                 install-cni does this)"
                .to_string(),
            PluginError::Agent { details, .. } => details.clone(),
            _ => String::new(),
        }
    }

    /// The CNI error object printed on stdout.
    pub fn to_cni_error(&self, cni_version: &str) -> CniError {
        CniError {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        }
    }
}

/// The error object of the CNI spec, printed on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = PluginError::AgentUnreachable {
            socket: "/run/nftpol/nftpol.sock".into(),
            source: AgentError::Timeout(std::time::Duration::from_secs(10)),
        };
        let v = serde_json::to_value(e.to_cni_error("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 11);
        assert_eq!(
            v["msg"],
            "nftpol agent not reachable at /run/nftpol/nftpol.sock: no answer within 10s"
        );
        assert!(v["details"].as_str().unwrap().contains("retries"));
        assert_eq!(v.as_object().unwrap().len(), 4);
    }

    #[test]
    fn details_are_omitted_when_empty_and_codes_match_the_spec() {
        let cases: Vec<(PluginError, u32)> = vec![
            (
                PluginError::IncompatibleVersion {
                    version: "0.2.0".into(),
                    supported: "x".into(),
                },
                1,
            ),
            (
                PluginError::MissingEnv {
                    var: "CNI_NETNS",
                    command: "ADD",
                },
                4,
            ),
            (PluginError::UnknownCommand("FOO".into()), 4),
            (
                PluginError::Decode {
                    source: serde_json::from_str::<u8>("x").unwrap_err(),
                },
                6,
            ),
            (PluginError::NoPrevResult, 7),
            (
                PluginError::Agent {
                    code: 7,
                    msg: "m".into(),
                    details: String::new(),
                },
                7,
            ),
            (
                PluginError::NotReady {
                    socket: "/s".into(),
                    code: 50,
                    msg: "syncing".into(),
                },
                50,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.code(), want, "{e}");
        }
        let v = serde_json::to_value(PluginError::UnknownCommand("X".into()).to_cni_error("1.1.0"))
            .unwrap();
        assert!(v.get("details").is_none(), "{v}");
    }
}
