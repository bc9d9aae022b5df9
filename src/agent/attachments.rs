//! The CNI attachments the agent knows, kept on disk so that a restarted agent keeps every
//! pod's anti-spoofing chain and its plugin-reported addresses (the API server learns a pod's
//! IPs only after CNI ADD returns, and may be unreachable when the agent restarts).
//!
//! The file (`<state-dir>/attachments.json`) is rewritten whole after every change, atomically:
//! a temporary file in the same directory, renamed over the old one. A reader therefore sees
//! the old or the new list, never a torn one. There is no fsync, on purpose: the list must
//! survive a crash of the agent (the page cache does), not of the node, whose pods and
//! interfaces are gone after a reboot anyway (the state dir is `/run`, a tmpfs); an fsync on
//! every CNI ADD would add milliseconds to every pod start on disk-backed state dirs. A node
//! has at most a few hundred attachments, so the whole file is a few tens of kilobytes.
//!
//! Attachments are identified by CNI's (container id, ifname), never by pod: a runtime may add
//! a new sandbox of a pod before deleting the old one. When one pod has several attachments
//! the most recent one is what the compiler gets.
//!
//! [`Links`] answers whether a host interface still exists. An attachment whose interface is
//! gone is dropped on load and before every full sync: its pod is gone (the runtime's DEL may
//! still come, and is idempotent), and an ingress base chain on a missing device makes kernels
//! before 6.16 refuse the whole batch.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nftpol_cni::protocol::{Attachment, AttachmentId};
use serde::{Deserialize, Serialize};

use crate::core::cluster::ObjectKey;
use crate::core::compile::LocalAttachment;

/// File name inside the state directory.
pub const STATE_FILE: &str = "attachments.json";

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid attachment list: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported format version {version} (this agent writes {FORMAT_VERSION})")]
    Version { path: PathBuf, version: u32 },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a network interface exists (in the agent's network namespace).
pub trait Links: Send {
    fn exists(&self, ifname: &str) -> bool;
}

/// The kernel's view: `if_nametoindex(3)`. Errors other than "no such device" count as
/// existing, so a transient failure never drops a pod's anti-spoofing.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelLinks;

impl Links for KernelLinks {
    fn exists(&self, ifname: &str) -> bool {
        match nix::net::if_::if_nametoindex(ifname) {
            Ok(_) => true,
            Err(nix::errno::Errno::ENODEV) => false,
            Err(e) => {
                tracing::debug!(ifname, error = %e, "cannot look up interface; assuming it exists");
                true
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    /// Oldest first.
    attachments: Vec<Attachment>,
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    attachment: Attachment,
}

/// The attachment list, in memory and (optionally) on disk.
#[derive(Debug, Default)]
pub struct AttachmentStore {
    path: Option<PathBuf>,
    by_id: BTreeMap<AttachmentId, Entry>,
    next_seq: u64,
}

/// The compiler's key of an attachment's pod.
pub fn pod_key(a: &Attachment) -> ObjectKey {
    ObjectKey::new(a.namespace.as_str(), a.name.as_str())
}

impl AttachmentStore {
    /// A store that is never written to disk (tests).
    pub fn in_memory() -> AttachmentStore {
        AttachmentStore::default()
    }

    /// Loads `<dir>/attachments.json` (an absent file is an empty list).
    pub fn load(dir: &Path) -> Result<AttachmentStore, StateError> {
        let path = dir.join(STATE_FILE);
        let mut store = AttachmentStore {
            path: Some(path.clone()),
            ..AttachmentStore::default()
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let file: FileFormat =
            serde_json::from_slice(&text).map_err(|source| StateError::Parse {
                path: path.clone(),
                source,
            })?;
        if file.version != FORMAT_VERSION {
            return Err(StateError::Version {
                path,
                version: file.version,
            });
        }
        for a in file.attachments {
            store.insert(a);
        }
        Ok(store)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &AttachmentId) -> Option<&Attachment> {
        self.by_id.get(id).map(|e| &e.attachment)
    }

    /// Adds or replaces an attachment (it becomes its pod's most recent one).
    pub fn insert(&mut self, a: Attachment) -> Option<Attachment> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id
            .insert(a.id.clone(), Entry { seq, attachment: a })
            .map(|e| e.attachment)
    }

    pub fn remove(&mut self, id: &AttachmentId) -> Option<Attachment> {
        self.by_id.remove(id).map(|e| e.attachment)
    }

    /// Removes and returns every attachment for which `drop` is true.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&Attachment) -> bool) -> Vec<Attachment> {
        let ids: Vec<AttachmentId> = self
            .by_id
            .iter()
            .filter(|(_, e)| drop(&e.attachment))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attachment> {
        self.by_id.values().map(|e| &e.attachment)
    }

    /// The pod's most recent attachment, as the compiler wants it.
    pub fn for_pod(&self, key: &ObjectKey) -> Option<LocalAttachment> {
        self.by_id
            .values()
            .filter(|e| {
                *e.attachment.namespace == *key.namespace && *e.attachment.name == *key.name
            })
            .max_by_key(|e| e.seq)
            .map(|e| LocalAttachment {
                host_interface: e.attachment.host_interface.clone(),
                ips: e.attachment.ips.clone(),
            })
    }

    /// Writes the list to disk atomically (no-op for an in-memory store).
    pub fn save(&self) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut entries: Vec<&Entry> = self.by_id.values().collect();
        entries.sort_by_key(|e| e.seq);
        let file = FileFormat {
            version: FORMAT_VERSION,
            attachments: entries.into_iter().map(|e| e.attachment.clone()).collect(),
        };
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(&file)
            .map_err(|e| werr(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        text.push(b'\n');
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(werr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(container: &str, name: &str, ifname: Option<&str>, ip: &str) -> Attachment {
        Attachment {
            id: AttachmentId {
                container_id: container.into(),
                ifname: "eth0".into(),
            },
            namespace: "prod".into(),
            name: name.into(),
            uid: None,
            netns: String::new(),
            host_interface: ifname.map(str::to_string),
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn survives_a_restart_and_keeps_the_latest_sandbox_of_a_pod() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AttachmentStore::load(dir.path()).unwrap();
        assert!(s.is_empty());
        s.insert(att("new", "web", Some("veth-new"), "10.0.0.2"));
        s.insert(att("old", "web", Some("veth-old"), "10.0.0.1"));
        // "new" is re-added later: it becomes the most recent again.
        s.insert(att("new", "web", Some("veth-new"), "10.0.0.2"));
        s.save().unwrap();

        let loaded = AttachmentStore::load(dir.path()).unwrap();
        assert_eq!(loaded.len(), 2);
        let key = ObjectKey::new("prod", "web");
        assert_eq!(
            loaded.for_pod(&key).unwrap().host_interface.as_deref(),
            Some("veth-new")
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = AttachmentStore::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(STATE_FILE), "{err}");
    }

    #[test]
    fn kernel_links_know_loopback_and_not_nonsense() {
        assert!(KernelLinks.exists("lo"));
        assert!(!KernelLinks.exists("nftpol-nosuch0"));
    }
}
