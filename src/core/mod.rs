//! The pure core: from a cluster snapshot to the desired nftables table of one node.
//!
//! Nothing here does I/O. The agent and the CLI feed objects in (already converted from the
//! Kubernetes API types by [`convert`]) and take a [`nft::model::Table`](crate::nft::model::Table)
//! or an incremental [`Transaction`](crate::nft::transaction::Transaction) out.

pub mod cluster;
pub mod compile;
pub mod convert;
pub mod eval;
pub mod policy;
pub mod selector;
