//! nftpol-e2e: a small Kubernetes-like cluster out of network namespaces, for real-kernel
//! tests and demos.
//!
//! NetworkPolicy enforcement is only proven by packets. This crate builds nodes and pods out
//! of network namespaces with the real `bridge` + `host-local` CNI plugins (played exactly as
//! containerd/CRI-O run them), connects the nodes flannel-host-gw style, and offers servers,
//! probes, connectivity matrices, a kube-proxy stand-in and helpers to run `nftpol` inside a
//! node. It is used by (1) kernel tests of `nftpol apply`, (2) end-to-end tests with a node
//! agent per node and the nftpol CNI plugin chained after `bridge`, (3) a local demo.
//!
//! Everything runs as root, only inside namespaces the harness creates, and everything is
//! removed when the [`Cluster`] (or [`Netns`]) is dropped, also on panic. Names are
//! `<prefix>-<pid>-<seq>-<role>`, unique per test process (tests run in parallel); leftovers of
//! a crashed run with the same prefix are removed by the next run ([`netns::cleanup_stale`]).
//! Tests skip loudly when not root ([`skip_unless_root!`]).
//!
//! # Topology and address plan
//!
//! ```text
//!                    underlay namespace <base>-ul: bridge br0
//!          n0 |                 n1 |                      h0 |   (veth peers)
//!   +---------+--------+  +--------+---------+    +----------+---------+
//!   | node-0 <base>-n0 |  | node-1 <base>-n1 |    | host <base>-h0     |
//!   | eth0 10.0.0.1    |  | eth0 10.0.0.2    |    | eth0 10.0.0.200    |
//!   |      fd00::1     |  |      fd00::2     |    |      fd00::200     |
//!   | cni0 10.244.0.1  |  | cni0 10.244.1.1  |    | routes to every    |
//!   |  fd00:10:244:0::1|  |  fd00:10:244:1::1|    | pod subnet via its |
//!   |  |veth  |veth    |  |  |veth           |    | node               |
//!   +--+------+--------+  +--+---------------+    +--------------------+
//!    pod      pod          pod       (pods: <base>-p<k>, eth0, default route via cni0)
//! ```
//!
//! | what | IPv4 | IPv6 (dual-stack only) |
//! |---|---|---|
//! | node `i` (underlay, `eth0`) | `10.0.0.(i+1)/24` | `fd00::(i+1)/64` |
//! | pod subnet of node `i` (`cni0` holds `.1`) | `10.244.i.0/24` | `fd00:10:244:i::/64` |
//! | external host `k` | `10.0.0.(200+k)/24` | `fd00::(200+k)/64` (hex) |
//! | Service IPs ([`service_ip`]; nodes route them to `eth0`) | `10.96.0.0/16` | `fd00:10:96::/112` |
//!
//! Node `i` routes every other node's pod subnets via that node's underlay address (host-gw),
//! so cross-node pod traffic is forwarded by both nodes; same-node traffic is bridged on
//! `cni0` and reaches the node's `inet` forward hook through br_netfilter
//! (`bridge-nf-call-iptables`/`ip6tables` = 1); forwarding is on; the underlay bridge has
//! br_netfilter off. IPv6 duplicate address detection is off everywhere (addresses are usable
//! at once). The CNI network is `nftpol-e2e`, `cniVersion` 1.0.0: `bridge` (`cni0`,
//! `isGateway`, `hairpinMode`, no masquerade) with `host-local` (private `dataDir` under
//! `/run/nftpol-e2e/<base>/node-i/ipam`), then any chained plugins.
//!
//! # API
//!
//! - [`Netns`]: a namespace guard. `create`, `delete`, `exec`/`exec_checked`/`command`
//!   (programs through `ip netns exec`), `run`/`spawn` (closures on a thread that entered it),
//!   `sysctl`/`sysctls`/`sysctl_get`, `ip`/`ip_batch`, `nft`/`nft_apply`/`ruleset`,
//!   `serve` (echo servers), `start` (long-running programs, e.g. an agent).
//! - [`Cluster::builder`] -> [`ClusterBuilder`] (`nodes`, `dual_stack`, `chain_plugin`,
//!   `chain_plugin_with`, `bridge_option`, `cni_path_prepend`, `cni_env`, `cni_timeout`) ->
//!   [`Cluster`]: `add_pod`/`add_pods` ([`PodSpec`]), `check_pod`, `delete_pod`, `add_host`,
//!   `add_service` ([`Service`]), `kube_objects`, `shutdown`.
//! - [`Node`]: `netns`, addresses, pod CIDRs, `conflist`/`set_conflist`/`conflist_path`,
//!   `ipam_leases`, `has_link`, `ruleset`. [`Pod`]: `ips`, `ip(Family)`, `host_veth`,
//!   `container_id`, `result`, `serve`. [`Host`]: an external machine.
//! - Traffic: [`probe`] (TCP handshake + echo, UDP echo, ICMP echo) -> [`Outcome`];
//!   [`probe_detailed`] with a [`Probe`] (optionally from a forged source);
//!   [`spoof_probe`]/[`send_spoofed_udp`]; [`Flood`] (background prober recording successes).
//! - [`Matrix`]: rows (any [`Endpoint`]: pod, node, host), columns (addresses), cases
//!   (protocol, port); [`MatrixResult::assert`] prints expected vs actual grids on mismatch.
//!   [`TargetMatrix`]: rows against columns that are each one address, port and protocol.
//! - [`cni::Runtime`]: the runtime emulation on its own (ADD/CHECK/DEL of a [`ConfList`]).
//! - [`kube_cluster::KubeCluster`]: the cluster with a test API server and an `nftpol agent`
//!   per node, the nftpol CNI plugin chained after `bridge`, pods created as the kubelet does.
//! - [`examples`]: the repository's `examples/` manifests set up in such a cluster (shared by
//!   their end-to-end tests and the local demo, `e2e/demo.sh`).
//!
//! # Example: 2 nodes, 3 namespaces x 3 pods
//!
//! ```no_run
//! use std::time::Duration;
//! use nftpol_e2e::{Cluster, Family, Matrix, Outcome, PodSpec, Proto};
//!
//! nftpol_e2e::skip_unless_root!("example", Ok(()));
//! let cluster = Cluster::builder("example").nodes(2).dual_stack(true).build()?;
//! let mut specs = Vec::new();
//! for (n, ns) in ["x", "y", "z"].iter().enumerate() {
//!     for (p, pod) in ["a", "b", "c"].iter().enumerate() {
//!         specs.push(PodSpec::new(ns, pod).on((n + p) % 2).label("pod", pod));
//!     }
//! }
//! let pods = cluster.add_pods(specs)?;
//! for pod in &pods {
//!     pod.serve_all(&[(Proto::Tcp, 80), (Proto::Udp, 53)])?;
//! }
//! let result = Matrix::new(Duration::from_secs(1))
//!     .rows(&pods)
//!     .row(cluster.node(0))
//!     .pod_cols(&pods, Family::V4)
//!     .pod_cols(&pods, Family::V6)
//!     .case(Proto::Tcp, 80)
//!     .case(Proto::Udp, 53)
//!     .run();
//! result.assert(|_cell| Outcome::Connected);
//! # Ok::<(), nftpol_e2e::ClusterError>(())
//! ```

pub mod apiserver;
pub mod apply;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod examples;
pub mod kube;
pub mod kube_cluster;
pub mod matrix;
pub mod netns;
pub mod observe;
pub mod process;
pub mod service;
pub mod traffic;

use std::path::PathBuf;

/// Re-exported: node pod subnets are `ipnet` types.
pub use ipnet;

pub use cluster::{
    Cluster, ClusterBuilder, ClusterError, Family, Host, Node, Pod, PodSpec, service_ip,
};
pub use cni::ConfList;
pub use matrix::{
    Cell, Matrix, MatrixResult, Target, TargetMatrix, TargetMatrixResult, run_probes,
};
pub use netns::{Netns, NetnsError};
pub use process::Process;
pub use service::Service;
pub use traffic::{
    Endpoint, Flood, FloodReport, Outcome, Probe, ProbeResult, Proto, Received, Server, probe,
    probe_detailed, send_bare_syn, send_spoofed_udp, spoof_probe,
};

/// Whether we run as root (kernel tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the enclosing test, printing a loud message, when not running as root.
/// `skip_unless_root!("name")` in a test returning `()`; `skip_unless_root!("name", value)`
/// returns `value` (e.g. `Ok(())`).
#[macro_export]
macro_rules! skip_unless_root {
    ($test:expr) => {
        $crate::skip_unless_root!($test, ())
    };
    ($test:expr, $ret:expr) => {
        if !$crate::is_root() {
            eprintln!(
                "\n!!! SKIPPED {}: needs root (network namespaces, nftables). Run as root to test against the kernel. !!!\n",
                $test
            );
            return $ret;
        }
    };
}

/// Sends `tracing` output to the test's captured output (level from `RUST_LOG`, default
/// `warn`). Safe to call from every test.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Another test of the same process may have installed it already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Errors finding a binary of the workspace.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(
        "binary {name} not found (looked at {looked}); build it first (`cargo build --bin {name}`) or set {var}"
    )]
    NotFound {
        name: String,
        looked: String,
        var: String,
    },
}

/// Path of a binary built in this workspace (e.g. `nftpol`), for tests that run it: the
/// environment variable `<NAME>_BIN` (upper case, `-` as `_`) if set, else the binary next to
/// the running test executable's profile directory (`target/<profile>/<name>`). Cargo does not
/// build other packages' binaries for our tests, so build it first.
pub fn workspace_binary(name: &str) -> Result<PathBuf, BinaryError> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            looked.push(candidate.display().to_string());
        }
    }
    Err(BinaryError::NotFound {
        name: name.to_string(),
        looked: looked.join(", "),
        var,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_binary_names_where_it_looked_and_the_override() {
        let err = super::workspace_binary("no-such-binary")
            .unwrap_err()
            .to_string();
        assert!(err.contains("NO_SUCH_BINARY_BIN"), "{err}");
        assert!(err.contains("cargo build --bin no-such-binary"), "{err}");
    }
}
