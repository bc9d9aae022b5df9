//! `nftpol render` and `nftpol apply`: the file-driven edge, a stable contract that tests and
//! users script against.
//!
//! Both load Kubernetes objects from files ([`crate::input`]), compile the node's table
//! ([`crate::core::compile`]) and then either print it or program it. `apply` reads the live
//! table first and sends only the difference, so it also repairs a table someone else changed,
//! and an unchanged input sends nothing. Bad input fails before the kernel is touched.

use std::path::PathBuf;

use serde::Serialize;

use crate::core::compile::{Compiler, Config};
use crate::dataplane::{ApplyReport, Dataplane, DataplaneError};
use crate::input::{self, InputError, Loaded};
use crate::nft::diff::{self, ModelError};
use crate::nft::model::Table;
use crate::nft::text;
use crate::nft::transaction::TransactionStats;

/// What `render` and `apply` need to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node whose table is computed.
    pub node: String,
    /// Files or directories with Kubernetes objects.
    pub paths: Vec<PathBuf>,
    /// Name of the inet table.
    pub table: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Input(#[from] InputError),
    /// The compiled table failed validation: a bug in nftpol, never the user's input.
    #[error("internal error: the computed table is invalid: {0}")]
    Invalid(ModelError),
    #[error("table inet {table}: {source}")]
    Dataplane {
        table: String,
        #[source]
        source: DataplaneError,
    },
}

/// The outcome of `apply`, printed as one line or as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ApplySummary {
    pub table: String,
    pub node: String,
    /// False when the kernel already held the desired table and nothing was sent.
    pub changed: bool,
    pub replaced: bool,
    pub chains_added: usize,
    pub chains_refilled: usize,
    pub chains_deleted: usize,
    pub sets_added: usize,
    pub sets_deleted: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub rules_added: usize,
    pub messages: usize,
    pub bytes: usize,
    pub elapsed_ms: f64,
}

impl ApplySummary {
    fn new(opts: &Options, stats: TransactionStats, report: ApplyReport) -> Self {
        ApplySummary {
            table: opts.table.clone(),
            node: opts.node.clone(),
            changed: report.messages > 0,
            replaced: stats.replace,
            chains_added: stats.chains_added,
            chains_refilled: stats.chains_flushed.saturating_sub(stats.chains_deleted),
            chains_deleted: stats.chains_deleted,
            sets_added: stats.sets_added,
            sets_deleted: stats.sets_deleted,
            elements_added: stats.elements_added,
            elements_deleted: stats.elements_deleted,
            rules_added: stats.rules_added,
            messages: report.messages,
            bytes: report.bytes,
            elapsed_ms: report.elapsed.as_secs_f64() * 1000.0,
        }
    }
}

impl std::fmt::Display for ApplySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.changed {
            return write!(f, "table inet {}: up to date, nothing sent", self.table);
        }
        write!(
            f,
            "table inet {}: {}chains +{} ~{} -{}, sets +{} -{}, elements +{} -{}, rules +{} \
             ({} messages, {} bytes, {:.1} ms)",
            self.table,
            if self.replaced { "replaced, " } else { "" },
            self.chains_added,
            self.chains_refilled,
            self.chains_deleted,
            self.sets_added,
            self.sets_deleted,
            self.elements_added,
            self.elements_deleted,
            self.rules_added,
            self.messages,
            self.bytes,
            self.elapsed_ms
        )
    }
}

/// Loads the input and compiles the node's table.
pub fn compile(opts: &Options) -> Result<(Table, Loaded), CliError> {
    let loaded = input::load(&opts.paths)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if !loaded.nodes.is_empty() && !loaded.nodes.iter().any(|n| *n.name == *opts.node) {
        tracing::warn!(
            node = %opts.node,
            "no Node object named {} in the input: its pod ranges are unknown",
            opts.node
        );
    }
    let table = compile_loaded(opts, &loaded)?;
    Ok((table, loaded))
}

/// Compiles already loaded objects.
pub fn compile_loaded(opts: &Options, loaded: &Loaded) -> Result<Table, CliError> {
    let mut c = Compiler::new(Config::new(opts.node.as_str()).table(opts.table.clone()));
    for ns in &loaded.namespaces {
        c.upsert_namespace(ns.clone());
    }
    for n in &loaded.nodes {
        c.upsert_node(n.clone());
    }
    for p in &loaded.pods {
        c.upsert_pod(p.clone());
    }
    for p in &loaded.policies {
        c.upsert_policy(p.clone());
    }
    c.commit();
    let table = c
        .table()
        .cloned()
        .unwrap_or_else(|| Table::new(opts.table.clone()));
    diff::validate_table(&table).map_err(CliError::Invalid)?;
    Ok(table)
}

/// `nftpol render`: the table as `nft -f` text.
pub fn render(opts: &Options) -> Result<String, CliError> {
    let (table, _) = compile(opts)?;
    Ok(text::render(&table))
}

/// `nftpol apply`: programs the difference between the live table and the desired one.
pub fn apply(opts: &Options, dataplane: &mut dyn Dataplane) -> Result<ApplySummary, CliError> {
    let (desired, _) = compile(opts)?;
    apply_table(opts, &desired, dataplane)
}

/// Programs a compiled table: reads the live one and sends the difference in one batch.
pub fn apply_table(
    opts: &Options,
    desired: &Table,
    dataplane: &mut dyn Dataplane,
) -> Result<ApplySummary, CliError> {
    let dp_err = |source| CliError::Dataplane {
        table: opts.table.clone(),
        source,
    };
    let current = dataplane.dump(&opts.table).map_err(dp_err)?;
    let tx = diff::diff(current.as_ref(), desired);
    let stats = tx.stats();
    let report = dataplane.apply(&tx).map_err(dp_err)?;
    Ok(ApplySummary::new(opts, stats, report))
}
