//! A change to nftpol's table, applied by the dataplane as one atomic netlink batch.
//!
//! A [`Transaction`] says *what* changes; the dataplane decides the message order, which is
//! always the same and always valid:
//!
//! 1. `replace`: delete the whole table first (then everything below re-creates it)
//! 2. create the table (when `create_table` or `replace`)
//! 3. declare new chains (empty), then new sets and maps (empty)
//! 4. flush the rules of `flush_chains` (changed chains and chains about to be deleted)
//! 5. delete set elements, then add set elements (map elements may jump to chains from 3)
//! 6. append `add_rules` to their chains (they may use sets and chains from 3)
//! 7. delete sets, then chains (nothing refers to them any more after 4 and 5)
//!
//! A set or base chain whose *definition* changes cannot be altered in place; producers
//! express that as a full `replace`. Producers: `nft::diff` (desired vs current table) and the
//! compiler's incremental path.

use std::collections::BTreeMap;

use super::model::{Chain, Key, Name, Rule, Set, Verdict};

/// One atomic change to the table named in `table`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Name of the (inet) table.
    pub table: String,
    /// Delete the table (and everything in it) before anything else.
    pub replace: bool,
    /// Create the table (a no-op if it exists).
    pub create_table: bool,
    /// New chains, declared empty (their rules come in `add_rules`).
    pub add_chains: Vec<Chain>,
    /// New sets and maps, declared empty (their elements come in `add_elements`).
    pub add_sets: Vec<Set>,
    /// Chains whose rules are all removed (before new rules are appended).
    pub flush_chains: Vec<Name>,
    /// Elements to remove, by set.
    pub delete_elements: BTreeMap<Name, Vec<Key>>,
    /// Elements to add, by set, with their map value.
    pub add_elements: BTreeMap<Name, Vec<(Key, Option<Verdict>)>>,
    /// Rules appended to a chain, in order.
    pub add_rules: Vec<(Name, Vec<Rule>)>,
    /// Sets and maps to delete.
    pub delete_sets: Vec<Name>,
    /// Chains to delete.
    pub delete_chains: Vec<Name>,
}

impl Transaction {
    pub fn new(table: impl Into<String>) -> Self {
        Transaction {
            table: table.into(),
            ..Transaction::default()
        }
    }

    /// True when applying it would change nothing (no batch is sent then).
    pub fn is_empty(&self) -> bool {
        !self.replace
            && !self.create_table
            && self.add_chains.is_empty()
            && self.add_sets.is_empty()
            && self.flush_chains.is_empty()
            && self.delete_elements.values().all(Vec::is_empty)
            && self.add_elements.values().all(Vec::is_empty)
            && self.add_rules.iter().all(|(_, r)| r.is_empty())
            && self.delete_sets.is_empty()
            && self.delete_chains.is_empty()
    }

    /// Counts of what the transaction does, for logs, metrics and tests.
    pub fn stats(&self) -> TransactionStats {
        TransactionStats {
            replace: self.replace,
            chains_added: self.add_chains.len(),
            chains_flushed: self.flush_chains.len(),
            chains_deleted: self.delete_chains.len(),
            sets_added: self.add_sets.len(),
            sets_deleted: self.delete_sets.len(),
            elements_added: self.add_elements.values().map(Vec::len).sum(),
            elements_deleted: self.delete_elements.values().map(Vec::len).sum(),
            rules_added: self.add_rules.iter().map(|(_, r)| r.len()).sum(),
        }
    }
}

/// Sizes of a transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionStats {
    pub replace: bool,
    pub chains_added: usize,
    pub chains_flushed: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub rules_added: usize,
}

impl std::fmt::Display for TransactionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}chains +{} ~{} -{}, sets +{} -{}, elements +{} -{}, rules +{}",
            if self.replace { "replace table, " } else { "" },
            self.chains_added,
            self.chains_flushed,
            self.chains_deleted,
            self.sets_added,
            self.sets_deleted,
            self.elements_added,
            self.elements_deleted,
            self.rules_added
        )
    }
}
