//! Shared test support: fixture builders (`fixtures`) and proptest strategies (`strategy`; `gen` is a keyword in edition 2024).
//!
//! Include it from a test file with `mod common;` at the crate root of the test binary (the
//! `sel!` macro refers to `crate::common::fixtures`). Every test binary uses a different part
//! of it, hence `dead_code` is allowed here.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod fixtures;
pub mod strategy;

pub use fixtures::*;
