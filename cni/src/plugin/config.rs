//! The network configuration on stdin: the standard keys of a chained plugin's config plus
//! nftpol's own (`socket`, `timeoutSeconds`, `logFile`, `logLevel`), and the CNI spec
//! versions the plugin speaks.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "cbr0", "type": "nftpol",
//!   "socket": "/run/nftpol/nftpol.sock",   // default protocol::DEFAULT_SOCKET
//!   "timeoutSeconds": 10,                  // how long ADD waits for the agent's commit
//!   "logFile": "/var/log/nftpol-cni.log",  // default: stderr (never stdout)
//!   "logLevel": "warn",                    // error | warn | info | debug | trace
//!   "prevResult": { ... }
//! }
//! ```
//!
//! Unknown keys (`runtimeConfig`, `capabilities`, `args`, ...) are ignored, as the spec allows.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::PluginError;
use crate::protocol::{AttachmentId, DEFAULT_SOCKET};

/// The CNI spec versions this plugin implements, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version, used where the runtime gave none (VERSION, early errors).
pub const LATEST_VERSION: &str = "1.1.0";

/// Default for `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `timeoutSeconds` may not exceed this (kubelet's own CNI calls time out after 4 minutes).
pub const MAX_TIMEOUT_SECONDS: f64 = 220.0;

/// A supported CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// 0.3.x and 0.4.0 results carry `ips[].version`; 1.x results do not.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

/// Log verbosity (`logLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    pub fn to_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// The config as it appears on stdin (only the keys we read).
#[derive(Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Box<RawValue>>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(rename = "timeoutSeconds", default)]
    timeout_seconds: Option<f64>,
    #[serde(rename = "logFile", default)]
    log_file: Option<PathBuf>,
    #[serde(rename = "logLevel", default)]
    log_level: Option<String>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<GcAttachment>>,
    /// The misspelt key libcni also sends (containernetworking/cni#1101).
    #[serde(rename = "cni.dev/attachments", default)]
    attachments: Option<Vec<GcAttachment>>,
}

#[derive(Deserialize)]
struct GcAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The validated network configuration.
#[derive(Debug)]
pub struct NetConf {
    /// `cniVersion` exactly as given (may be unsupported; see [`NetConf::version`]).
    pub cni_version: Option<String>,
    pub name: Option<String>,
    /// `prevResult`, byte for byte as the runtime sent it.
    pub prev_result: Option<Box<RawValue>>,
    pub socket: PathBuf,
    pub timeout: Duration,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    /// GC: the union of both attachment keys, sorted and deduplicated.
    pub valid_attachments: Vec<AttachmentId>,
}

impl NetConf {
    /// Parses and validates stdin. Syntax errors are decoding failures (code 6); a key of the
    /// wrong type or value is an invalid network configuration (code 7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, PluginError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => PluginError::InvalidConfig {
                field: "stdin".into(),
                reason: e.to_string(),
            },
            _ => PluginError::Decode { source: e },
        })?;
        let invalid = |field: &str, reason: String| PluginError::InvalidConfig {
            field: field.into(),
            reason,
        };
        let timeout = match raw.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECONDS => {
                Duration::from_secs_f64(s)
            }
            Some(s) => {
                return Err(invalid(
                    "timeoutSeconds",
                    format!("{s} is not in (0, {MAX_TIMEOUT_SECONDS}]"),
                ));
            }
        };
        let socket = raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if socket.as_os_str().is_empty() {
            return Err(invalid("socket", "must not be empty".into()));
        }
        let log_level = match raw.log_level.as_deref() {
            None | Some("") => LogLevel::Warn,
            Some(l) => LogLevel::parse(l).ok_or_else(|| {
                invalid(
                    "logLevel",
                    format!("{l:?} is not one of error, warn, info, debug, trace"),
                )
            })?,
        };
        let mut valid: Vec<AttachmentId> = raw
            .valid_attachments
            .into_iter()
            .chain(raw.attachments)
            .flatten()
            .map(|a| AttachmentId {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        valid.sort();
        valid.dedup();
        Ok(NetConf {
            cni_version: raw.cni_version.filter(|v| !v.is_empty()),
            name: raw.name,
            prev_result: raw.prev_result,
            socket,
            timeout,
            log_file: raw.log_file.filter(|p| !p.as_os_str().is_empty()),
            log_level,
            valid_attachments: valid,
        })
    }

    /// The requested spec version, if we support it (code 1 otherwise).
    pub fn version(&self) -> Result<Version, PluginError> {
        let v = self.cni_version.as_deref().unwrap_or("");
        Version::parse(v).ok_or_else(|| PluginError::IncompatibleVersion {
            version: v.to_string(),
            supported: SUPPORTED_VERSIONS.join(", "),
        })
    }

    /// The version to stamp on error objects: the requested one, else the latest.
    pub fn error_version(&self) -> &str {
        self.cni_version.as_deref().unwrap_or(LATEST_VERSION)
    }
}

/// `cniVersion` from stdin even when the rest does not parse (for the error object).
pub fn lenient_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct OnlyVersion {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<OnlyVersion>(stdin)
        .ok()
        .map(|v| v.cni_version)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_a_bare_chained_config() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"nftpol"}"#).unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/nftpol/nftpol.sock"));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.version().unwrap(), Version::V1_0_0);
        assert!(c.prev_result.is_none());
        assert_eq!(c.name.as_deref(), Some("cbr0"));
    }

    #[test]
    fn our_keys_are_read_and_runtime_keys_ignored() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"nftpol","socket":"/tmp/a.sock",
                "timeoutSeconds":2.5,"logFile":"/tmp/l","logLevel":"DEBUG",
                "runtimeConfig":{"portMappings":[]},"capabilities":{"x":true},
                "prevResult":{"cniVersion":"0.4.0","ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.log_file, Some(PathBuf::from("/tmp/l")));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(
            c.prev_result.unwrap().get(),
            r#"{"cniVersion":"0.4.0","ips":[]}"#
        );
    }

    #[test]
    fn syntax_errors_are_code_6_and_type_errors_code_7() {
        let e = NetConf::parse(b"{\"cniVersion\": ").unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","timeoutSeconds":"10"}"#).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","timeoutSeconds":0}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("timeoutSeconds"), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","logLevel":"loud"}"#).unwrap_err();
        assert!(e.to_string().contains("logLevel"), "{e}");
    }

    #[test]
    fn unsupported_or_missing_versions_are_code_1() {
        for conf in [&br#"{"cniVersion":"0.2.0"}"#[..], br#"{"name":"x"}"#] {
            let e = NetConf::parse(conf).unwrap().version().unwrap_err();
            assert_eq!(e.code(), 1, "{e}");
        }
        assert_eq!(
            lenient_version(br#"{"cniVersion":"0.4.0","x":"#),
            LATEST_VERSION
        );
        assert_eq!(
            lenient_version(br#"{"cniVersion":"0.4.0","socket":7}"#),
            "0.4.0"
        );
    }

    #[test]
    fn gc_attachments_from_both_keys_are_merged() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0",
                "cni.dev/valid-attachments":[{"containerID":"b","ifname":"eth0"},{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"a","ifname":"net1"}]}"#,
        )
        .unwrap();
        let ids: Vec<_> = c
            .valid_attachments
            .iter()
            .map(|a| format!("{}/{}", a.container_id, a.ifname))
            .collect();
        assert_eq!(ids, ["a/eth0", "a/net1", "b/eth0"]);
    }
}
