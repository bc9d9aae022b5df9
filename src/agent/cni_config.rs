//! Keeps nftpol chained in the host's CNI config.
//!
//! The init container chains the plugin once, but the primary CNI may rewrite its config
//! later: flannel's init container copies `10-flannel.conflist` again every time a flannel pod
//! starts (upgrade, node reboot), which silently drops our entry, and new pods would then start
//! without the plugin. The agent therefore re-runs the (idempotent) config part of
//! `install-cni` periodically; a check that changes nothing writes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nftpol_cni::install::{self, InstallOptions};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Where the host's CNI config is and how the plugin entry must look.
#[derive(Debug, Clone)]
pub struct CniConfigGuard {
    /// The host CNI config directory as mounted into the agent.
    pub conf_dir: PathBuf,
    /// The config file; `None`: the one the runtime loads.
    pub conflist: Option<String>,
    /// Socket and timeout written into the entry.
    pub socket: PathBuf,
    pub timeout_seconds: u64,
    pub interval: Duration,
}

impl CniConfigGuard {
    fn options(&self) -> InstallOptions {
        InstallOptions {
            conf_dir: self.conf_dir.clone(),
            conflist: self.conflist.clone(),
            socket: self.socket.clone(),
            timeout_seconds: self.timeout_seconds,
            // The binary is the init container's business; only the config is checked here.
            skip_binary: true,
            ..InstallOptions::default()
        }
    }

    /// Checks once; true when the entry had to be put back.
    pub fn check(&self, metrics: &Metrics) -> bool {
        match install::install(&self.options()) {
            Ok(report) if report.changed() => {
                metrics.cni_config_repairs.inc();
                tracing::warn!(
                    conf_dir = %self.conf_dir.display(),
                    "the CNI config had lost the nftpol plugin (rewritten by the primary CNI?); chained it again: {}",
                    report.to_string().trim_end()
                );
                true
            }
            Ok(_) => false,
            Err(error) => {
                metrics.cni_config_errors.inc();
                tracing::warn!(%error, "checking the CNI config failed");
                false
            }
        }
    }

    /// Checks every `interval` until cancelled.
    pub async fn run(self, metrics: Arc<Metrics>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let guard = self.clone();
            let m = metrics.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || guard.check(&m)).await {
                tracing::warn!(%error, "CNI config check panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

    #[test]
    fn a_rewritten_conflist_gets_the_plugin_back_and_a_good_one_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("10-flannel.conflist");
        std::fs::write(&path, FLANNEL).expect("write");
        let guard = CniConfigGuard {
            conf_dir: dir.path().to_path_buf(),
            conflist: Some("10-flannel.conflist".into()),
            socket: "/run/nftpol/nftpol.sock".into(),
            timeout_seconds: 10,
            interval: Duration::from_secs(10),
        };
        let metrics = Metrics::new();
        assert!(guard.check(&metrics), "first check chains the plugin");
        let chained = std::fs::read_to_string(&path).expect("read");
        assert!(chained.contains("\"nftpol\""), "{chained}");
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        assert!(!guard.check(&metrics), "nothing to do the second time");
        assert_eq!(
            std::fs::metadata(&path).and_then(|m| m.modified()).ok(),
            mtime
        );
        // flannel's init container copies its config again.
        std::fs::write(&path, FLANNEL).expect("rewrite");
        assert!(guard.check(&metrics), "the lost entry is put back");
        assert_eq!(metrics.cni_config_repairs.get(), 2);
    }
}
