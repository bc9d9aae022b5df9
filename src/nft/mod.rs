//! The nftables ruleset as data: model, text printer, and diff into a transaction.

pub mod diff;
pub mod model;
pub mod text;
pub mod trace;
pub mod transaction;
