//! A stand-in for kube-proxy: the test's own small DNAT table for Services.
//!
//! NetworkPolicy applies to pod IPs after Service translation, so an enforcer must see
//! backend addresses in its forward chain. To prove that without a kube-proxy, the harness
//! installs `table inet e2e_svc` in each node: nat chains at priority `dstnat` (-100) on
//! prerouting (traffic from pods and other nodes) and output (traffic from the node itself),
//! a ClusterIP:port match per Service and, like kube-proxy's nftables mode, a random choice of
//! backend chain that does the DNAT. Like kube-proxy, a pod that reaches itself through its
//! Service (hairpin) is masqueraded to the node (mark 0x4000, postrouting at `srcnat`):
//! without that the pod would drop a packet with its own address as source. The table is
//! replaced atomically on every change. It is a table of its own and never touches anyone
//! else's.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::netns::{Netns, NetnsError};
use crate::traffic::Proto;

/// The table the harness owns for Services (family `inet`).
pub const SERVICE_TABLE: &str = "e2e_svc";

/// The packet mark that asks for masquerade (kube-proxy's `KUBE-MARK-MASQ` bit).
pub const HAIRPIN_MARK: u32 = 0x4000;

/// A Service: a virtual IP and port load-balanced to backend pod addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// For comments and messages (`ns/name`).
    pub name: String,
    pub proto: Proto,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// Pod IP and target port of each endpoint, same family as `cluster_ip`.
    pub backends: Vec<SocketAddr>,
}

impl Service {
    pub fn new(name: &str, proto: Proto, cluster_ip: IpAddr, port: u16) -> Service {
        Service {
            name: name.to_string(),
            proto,
            cluster_ip,
            port,
            backends: Vec::new(),
        }
    }

    /// Adds an endpoint.
    pub fn backend(mut self, ip: IpAddr, port: u16) -> Service {
        self.backends.push(SocketAddr::new(ip, port));
        self
    }

    fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |reason: String| {
            Err(ServiceError::Invalid {
                service: self.name.clone(),
                reason,
            })
        };
        if self.proto == Proto::Icmp {
            return invalid("services are tcp or udp".into());
        }
        if self.backends.is_empty() {
            return invalid("no backends".into());
        }
        if let Some(b) = self
            .backends
            .iter()
            .find(|b| b.is_ipv4() != self.cluster_ip.is_ipv4())
        {
            return invalid(format!(
                "backend {b} is not of the family of {}",
                self.cluster_ip
            ));
        }
        if self.name.contains('"') {
            return invalid("name must not contain '\"'".into());
        }
        Ok(())
    }
}

/// Errors of the Service table.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {service}: {reason}")]
    Invalid { service: String, reason: String },
    #[error("installing table inet {SERVICE_TABLE}: {source}")]
    Install {
        #[source]
        source: NetnsError,
    },
}

/// The `nft -f` text that replaces the Service table with `services`.
pub fn render(services: &[Service]) -> Result<String, ServiceError> {
    let mut t = String::new();
    // Create-then-delete makes the load work whether or not the table exists; the whole file
    // is one transaction.
    let _ = writeln!(t, "table inet {SERVICE_TABLE}");
    let _ = writeln!(t, "delete table inet {SERVICE_TABLE}");
    let _ = writeln!(t, "table inet {SERVICE_TABLE} {{");
    for hook in ["prerouting", "output"] {
        let _ = writeln!(
            t,
            // -100 is `dstnat`; nft accepts that name for prerouting only.
            "\tchain {hook} {{\n\t\ttype nat hook {hook} priority -100; policy accept;\n\t\tjump services\n\t}}"
        );
    }
    let _ = writeln!(
        t,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} masquerade\n\t}}"
    );
    let _ = writeln!(t, "\tchain services {{");
    for (i, svc) in services.iter().enumerate() {
        svc.validate()?;
        let family = if svc.cluster_ip.is_ipv4() {
            "ip"
        } else {
            "ip6"
        };
        let _ = writeln!(
            t,
            "\t\t{family} daddr {} {} dport {} goto svc_{i} comment \"{}\"",
            svc.cluster_ip, svc.proto, svc.port, svc.name
        );
    }
    let _ = writeln!(t, "\t}}");
    for (i, svc) in services.iter().enumerate() {
        let family = if svc.cluster_ip.is_ipv4() {
            "ip"
        } else {
            "ip6"
        };
        let choices = (0..svc.backends.len())
            .map(|j| format!("{j} : goto svc_{i}_ep_{j}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            t,
            "\tchain svc_{i} {{\n\t\tnumgen random mod {} vmap {{ {choices} }}\n\t}}",
            svc.backends.len()
        );
        for (j, b) in svc.backends.iter().enumerate() {
            let target = match b {
                SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            };
            let _ = writeln!(
                t,
                "\tchain svc_{i}_ep_{j} {{\n\t\t{family} saddr {} meta mark set meta mark | {HAIRPIN_MARK:#x}\n\t\tmeta l4proto {} dnat {family} to {target}\n\t}}",
                b.ip(),
                svc.proto
            );
        }
    }
    let _ = writeln!(t, "}}");
    Ok(t)
}

/// Replaces the Service table in `netns` with `services`.
pub fn install(netns: &Netns, services: &[Service]) -> Result<(), ServiceError> {
    let text = render(services)?;
    netns
        .nft_apply(&text)
        .map_err(|source| ServiceError::Install { source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_validated() {
        let ip4: IpAddr = "10.96.0.10".parse().unwrap();
        let ip6: IpAddr = "fd00:10:96::10".parse().unwrap();
        assert!(render(&[Service::new("a", Proto::Tcp, ip4, 80)]).is_err());
        assert!(render(&[Service::new("a", Proto::Icmp, ip4, 80).backend(ip4, 1)]).is_err());
        assert!(render(&[Service::new("a", Proto::Tcp, ip4, 80).backend(ip6, 1)]).is_err());
        assert!(render(&[Service::new("a", Proto::Udp, ip6, 53).backend(ip6, 5353)]).is_ok());
    }
}
