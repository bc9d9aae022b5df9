//! nftpol's CNI plugin, kept apart from the agent so that it can be built as a small static
//! binary for hosts' `/opt/cni/bin`.
//!
//! - [`protocol`]: the request/response messages between the plugin and the node agent over a
//!   unix socket (the agent implements the server side in the main crate).
//! - [`plugin`]: the chained CNI plugin itself ([`plugin::run`]).
//! - [`install`]: `nftpol install-cni`: puts the plugin binary into the host's CNI bin dir
//!   and chains it into the active conflist ([`install::install`], [`install::uninstall`]).

pub mod install;
mod json;
pub mod plugin;
pub mod protocol;
