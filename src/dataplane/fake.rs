//! An in-memory dataplane with the kernel's semantics, for tests of everything above the
//! kernel edge: it applies transactions all or nothing with the kernel's refusals
//! (`nft::diff::apply_to`) and records what it was sent, so tests can assert that only the
//! delta went out.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::encode::{self, SetShape};
use super::{ApplyReport, Dataplane, DataplaneError};
use crate::nft::diff::apply_to;
use crate::nft::model::Table;
use crate::nft::transaction::Transaction;

/// Tables in memory, by name.
#[derive(Debug, Default)]
pub struct Fake {
    tables: BTreeMap<String, Table>,
    applied: Vec<Transaction>,
}

impl Fake {
    pub fn new() -> Fake {
        Fake::default()
    }

    /// A fake that already holds `table` (as if someone had programmed it before).
    pub fn with_table(table: Table) -> Fake {
        let mut f = Fake::new();
        f.tables.insert(table.name.clone(), table);
        f
    }

    /// The non-empty transactions applied successfully, in order.
    pub fn applied(&self) -> &[Transaction] {
        &self.applied
    }

    /// The current state of a table.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    /// Changes a table behind nftpol's back (like another tool would).
    pub fn table_mut(&mut self, name: &str) -> Option<&mut Table> {
        self.tables.get_mut(name)
    }
}

impl Dataplane for Fake {
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, DataplaneError> {
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        let started = Instant::now();
        let mut slot = self.tables.get(&tx.table).cloned();
        apply_to(&mut slot, tx)?;
        // Size the batch the real dataplane would send.
        let shapes: HashMap<_, _> = self
            .tables
            .get(&tx.table)
            .map(|t| {
                t.sets
                    .iter()
                    .map(|(n, s)| (n.clone(), SetShape::of(s)))
                    .collect()
            })
            .unwrap_or_default();
        let build_started = Instant::now();
        let batch = encode::encode(tx, 0, &shapes)?;
        let build = build_started.elapsed();
        match slot {
            Some(t) => self.tables.insert(tx.table.clone(), t),
            None => self.tables.remove(&tx.table),
        };
        self.applied.push(tx.clone());
        Ok(ApplyReport {
            messages: batch.messages,
            bytes: batch.buf.len(),
            elapsed: started.elapsed(),
            build,
        })
    }

    fn dump(&mut self, table: &str) -> Result<Option<Table>, DataplaneError> {
        Ok(self.tables.get(table).cloned())
    }
}
