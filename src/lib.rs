//! nftpol: a Kubernetes NetworkPolicy enforcer that renders one nftables table per node and
//! programs it atomically through netlink.
//!
//! The crate is layered so that the I/O boundary is the architecture (see ARCHITECTURE.md):
//!
//! - [`core`]: pure. Cluster snapshot (Namespaces, Pods, Nodes, NetworkPolicies) in, desired
//!   ruleset out. No tokio, no kube client, no netlink, no clock.
//! - [`nft`]: pure. The typed ruleset model, its text form (`nft -f` syntax) and the diff of
//!   two rulesets as one transaction.
//! - [`dataplane`]: the kernel. Encodes a transaction as one netlink batch (nftnl + mnl), reads
//!   the table back, and a fake with the kernel's all-or-nothing semantics for tests.
//! - [`input`]: Kubernetes objects from YAML/JSON files, for `render` and `apply`.
//! - [`agent`]: the node agent (kube watchers, the engine that owns the table, the CNI
//!   server, metrics).
//!
//! Dependencies point one way: `input`, `agent` -> `core` -> `nft` <- `dataplane`.

pub mod agent;
pub mod cli;
pub mod core;
pub mod dataplane;
pub mod input;
pub mod nft;
