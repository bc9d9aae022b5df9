//! The kernel edge: programs a [`Transaction`] as one atomic netlink batch and reads the live
//! table back, behind a narrow trait so the rest of nftpol can be tested against an honest fake.
//!
//! - [`Netlink`] talks to the kernel of the current network namespace (nftnl + mnl).
//! - [`Fake`] keeps tables in memory with the kernel's all-or-nothing semantics
//!   ([`crate::nft::diff::apply_to`]) and records every transaction it was given.

mod encode;
mod expr;
mod fake;
mod ffi;
mod msg;
mod netlink;

use std::time::Duration;

use crate::nft::model::Table;
use crate::nft::transaction::Transaction;

pub use encode::EncodeError;
pub use fake::Fake;
pub use netlink::{FOREIGN_MARK, Netlink};

/// What applying one transaction cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink messages sent, batch begin and end included (0 for an empty transaction).
    pub messages: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// Wall time from building the batch to the last reply.
    pub elapsed: Duration,
    /// Of which building the batch in userspace (encoding, before the send).
    pub build: Duration,
}

/// Programs and reads nftpol's table.
pub trait Dataplane {
    /// Applies the transaction atomically: all of it or none of it. An empty transaction
    /// sends nothing.
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, DataplaneError>;
    /// Reads the live table `inet <table>`; `None` when it does not exist.
    fn dump(&mut self, table: &str) -> Result<Option<Table>, DataplaneError>;
}

/// Why the dataplane could not apply or dump.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Refused before anything was sent (or by the fake).
    #[error("transaction refused: {0}")]
    Model(#[from] crate::nft::diff::ModelError),
    /// The kernel refused the batch; nothing of it was applied.
    #[error("{operation}: {source}")]
    Kernel {
        operation: String,
        errno: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("could not encode the transaction: {0}")]
    Encode(#[from] EncodeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("table {table}: reading it back failed: {reason}")]
    Dump { table: String, reason: String },
}
