//! nftpol's CNI plugin, kept apart from the agent so that it can be built as a small static
//! binary for hosts' `/opt/cni/bin`.
//!
//! - [`protocol`]: the request/response messages between the plugin and the node agent over a
//!   unix socket (the agent implements the server side in the main crate).

pub mod protocol;
