//! The plugin <-> agent protocol: one JSON request line, one JSON response line, per
//! connection on the agent's unix socket (default [`DEFAULT_SOCKET`]).
//!
//! The agent answers an `add` only once the pod's isolation has been committed to the kernel,
//! so the runtime starts the pod's containers only after that.
//!
//! # Wire format (stable; new fields only with serde defaults)
//!
//! The plugin connects, writes one request line, reads one response line, closes. It does not
//! half-close its sending side, so a server may treat EOF as "the plugin gave up" (its
//! deadline passed: `timeoutSeconds` for ADD, CHECK, STATUS and GC, at most 2 s for DEL).
//!
//! ```text
//! {"op":"add","id":{"container_id":"3f69..","ifname":"eth0"},"namespace":"prod","name":"web-0",
//!  "uid":"5e1c..","netns":"/var/run/netns/cni-1234","host_interface":"vethed626701",
//!  "ips":["10.99.0.2","fd00:99::2"]}
//! {"op":"del", ...same fields as add...}      (ips/host_interface may be empty/absent)
//! {"op":"check", ...same fields as add...}
//! {"op":"status"}
//! {"op":"gc","valid":[{"container_id":"aaa","ifname":"eth0"}]}
//!
//! {"ok":true}
//! {"ok":false,"error":{"code":11,"msg":"caches not synced","details":"optional"}}
//! ```
//!
//! How the plugin uses the answer: `ok:false` on ADD and CHECK fails the CNI call with the
//! agent's `code` and `msg` (11 makes the runtime retry); on STATUS it becomes code 50 (or
//! 51 if the agent says 51); on DEL it is only logged (DEL always succeeds); on GC it fails the
//! call. `uid` is absent when the runtime does not pass `K8S_POD_UID`; `host_interface` is
//! absent when the result has no host-side peer (see `plugin::result` for the rule). DEL may
//! come with empty `namespace`/`name` (a runtime retrying teardown without `CNI_ARGS`): the
//! agent identifies attachments by `id`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the agent listens by default (a hostPath shared with the host's CNI runtime).
pub const DEFAULT_SOCKET: &str = "/run/nftpol/nftpol.sock";

/// A request from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A pod's network was set up: isolate it, answer when committed.
    Add(Attachment),
    /// A pod's network is being torn down: forget it (idempotent).
    Del(Attachment),
    /// Verify that the pod's entries are in the kernel.
    Check(Attachment),
    /// Is the agent ready to serve ADDs (caches synced, table programmed)?
    Status,
    /// Forget every attachment not in `valid` (CNI GC).
    Gc { valid: Vec<AttachmentId> },
}

/// Identity of one attachment, as CNI GC lists them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentId {
    pub container_id: String,
    /// `CNI_IFNAME` (the interface inside the pod, usually `eth0`).
    pub ifname: String,
}

/// One pod network attachment, from the CNI environment and `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: AttachmentId,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub name: String,
    /// `K8S_POD_UID` from `CNI_ARGS`, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: String,
    /// The host side of the pod's veth (the `prevResult` interface without a sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// The pod's addresses from `prevResult.ips` (without prefix length).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// Set when `ok` is false: a CNI error code (see the CNI spec: 11 = try again later) and
    /// a message for the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            error: None,
        }
    }

    pub fn error(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(ErrorBody {
                code,
                msg: msg.into(),
                details: details.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r = Request::Add(Attachment {
            id: AttachmentId {
                container_id: "abc".into(),
                ifname: "eth0".into(),
            },
            namespace: "prod".into(),
            name: "web-1".into(),
            uid: None,
            netns: "/run/netns/x".into(),
            host_interface: Some("veth1234".into()),
            ips: vec!["10.244.1.5".parse().unwrap()],
        });
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"op":"add","#), "{s}");
        assert!(!s.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let st = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(st, r#"{"op":"status"}"#);
    }

    #[test]
    fn the_documented_shapes_parse() {
        let add: Request = serde_json::from_str(
            r#"{"op":"add","id":{"container_id":"3f69","ifname":"eth0"},"namespace":"prod","name":"web-0","uid":"5e1c","netns":"/var/run/netns/cni-1234","host_interface":"vethed626701","ips":["10.99.0.2","fd00:99::2"]}"#,
        )
        .unwrap();
        let Request::Add(a) = add else { panic!() };
        assert_eq!(a.ips.len(), 2);
        // Optional fields may be absent.
        let del: Request = serde_json::from_str(
            r#"{"op":"del","id":{"container_id":"3f69","ifname":"eth0"},"namespace":"","name":""}"#,
        )
        .unwrap();
        assert!(
            matches!(del, Request::Del(ref a) if a.ips.is_empty() && a.host_interface.is_none())
        );
        let gc = Request::Gc {
            valid: vec![AttachmentId {
                container_id: "aaa".into(),
                ifname: "eth0".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&gc).unwrap(),
            r#"{"op":"gc","valid":[{"container_id":"aaa","ifname":"eth0"}]}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error(11, "caches not synced", "")).unwrap(),
            r#"{"ok":false,"error":{"code":11,"msg":"caches not synced"}}"#
        );
    }
}
