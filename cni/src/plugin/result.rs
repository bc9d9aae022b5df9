//! Reading `prevResult` (which addresses the pod got, which host interface leads to it) and
//! echoing it as our own result.
//!
//! # Which interface is the host side of the pod's link
//!
//! A result lists interfaces in the order the plugins created them; the pod's own interface
//! has a `sandbox`, host interfaces do not. A bridge has no `sandbox` either, so "the
//! interface without a sandbox" is ambiguous for `bridge` (and flannel, which delegates to
//! it): it lists `[cni0, vethXXXX, eth0]`. The rule, in order:
//!
//! 1. The pod interface is the one the pod addresses (`ips[].interface`) point at, if it has
//!    a `sandbox`; else the sandboxed interface named `CNI_IFNAME`; else the first sandboxed
//!    interface.
//! 2. The host interface is the nearest interface *before* the pod interface that has no
//!    `sandbox`. `bridge` lists bridge, host veth, container veth; `ptp` (kindnet) lists host
//!    veth, container veth; so the nearest preceding one is the veth, never the bridge.
//!    Interfaces after the pod interface (the `ifb` device that `bandwidth` appends) are
//!    never picked.
//! 3. Otherwise there is none (`macvlan`, `ipvlan`: the pod interface has no host peer) and
//!    `host_interface` is `None`: the agent must not rely on it.
//!
//! # Addresses
//!
//! Every `ips[].address` (prefix dropped) whose `interface` is unset or points at a
//! sandboxed interface; an address on a host interface is the host's, not the pod's.
//!
//! # Echoing
//!
//! When `prevResult.cniVersion` is the requested version, the result is `prevResult` byte for
//! byte. Otherwise it is converted to the requested version's format (0.3.x/0.4.0 results
//! carry `ips[].version`, 1.x results do not), keeping every other key in place.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::{SUPPORTED_VERSIONS, Version};
use super::error::PluginError;
use crate::json::Json;

#[derive(Debug, Deserialize)]
struct PrevResult {
    #[serde(rename = "cniVersion", default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpEntry>,
}

#[derive(Debug, Deserialize)]
struct Interface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    sandbox: Option<String>,
}

impl Interface {
    fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }
}

#[derive(Debug, Deserialize)]
struct IpEntry {
    address: String,
    #[serde(default)]
    interface: Option<i64>,
}

/// What the agent needs to know from `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The version `prevResult` says it is in, if any.
    pub cni_version: Option<String>,
    /// The pod's addresses, in result order, without duplicates.
    pub ips: Vec<IpAddr>,
    /// The host side of the pod's link (see the module docs for the rule).
    pub host_interface: Option<String>,
}

fn invalid(field: String, reason: impl Into<String>) -> PluginError {
    PluginError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// Reads the pod's addresses and host interface from `prevResult`.
pub fn inspect(prev: &RawValue, ifname: &str) -> Result<PodNetwork, PluginError> {
    let r: PrevResult = serde_json::from_str(prev.get())
        .map_err(|e| invalid("prevResult".into(), e.to_string()))?;
    let mut pointers = Vec::with_capacity(r.ips.len());
    for (i, ip) in r.ips.iter().enumerate() {
        let index = match ip.interface {
            None => None,
            Some(n) => match usize::try_from(n).ok().filter(|&n| n < r.interfaces.len()) {
                Some(n) => Some(n),
                None => {
                    return Err(invalid(
                        format!("prevResult.ips[{i}].interface"),
                        format!(
                            "{n} is not an index into interfaces[{}]",
                            r.interfaces.len()
                        ),
                    ));
                }
            },
        };
        pointers.push(index);
    }

    let sandboxed = |i: &usize| r.interfaces[*i].in_sandbox();
    let pod_index = pointers
        .iter()
        .flatten()
        .copied()
        .find(sandboxed)
        .or_else(|| {
            r.interfaces
                .iter()
                .position(|f| f.in_sandbox() && f.name == ifname)
        })
        .or_else(|| r.interfaces.iter().position(Interface::in_sandbox));
    let host_interface = pod_index.and_then(|p| {
        r.interfaces[..p]
            .iter()
            .rev()
            .find(|f| !f.in_sandbox() && !f.name.is_empty())
            .map(|f| f.name.clone())
    });

    let mut ips = Vec::new();
    for (i, (ip, pointer)) in r.ips.iter().zip(&pointers).enumerate() {
        if pointer.is_some_and(|p| !sandboxed(&p)) {
            continue;
        }
        let addr = parse_address(&ip.address).ok_or_else(|| {
            invalid(
                format!("prevResult.ips[{i}].address"),
                format!(
                    "{:?} is not an IP address with an optional prefix length",
                    ip.address
                ),
            )
        })?;
        if !ips.contains(&addr) {
            ips.push(addr);
        }
    }
    Ok(PodNetwork {
        cni_version: r.cni_version.filter(|v| !v.is_empty()),
        ips,
        host_interface,
    })
}

/// `10.244.1.5/24` -> `10.244.1.5` (a bare address is accepted too).
fn parse_address(s: &str) -> Option<IpAddr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    if let Some(p) = prefix {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        p.parse::<u8>().ok().filter(|&p| p <= max)?;
    }
    Some(addr)
}

/// Our ADD result: `prevResult`, in the requested version's format.
pub fn render(
    prev: &RawValue,
    prev_version: Option<&str>,
    target: Version,
) -> Result<Vec<u8>, PluginError> {
    if prev_version == Some(target.as_str()) {
        return Ok(prev.get().as_bytes().to_vec());
    }
    let source = match prev_version {
        None => None,
        Some(v) => Some(
            Version::parse(v).ok_or_else(|| PluginError::IncompatibleVersion {
                version: format!("{v} (prevResult)"),
                supported: SUPPORTED_VERSIONS.join(", "),
            })?,
        ),
    };
    let mut value: Json = serde_json::from_str(prev.get())
        .map_err(|e| invalid("prevResult".into(), e.to_string()))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| invalid("prevResult".into(), "is not an object"))?;
    obj.insert_front("cniVersion", Json::String(target.as_str().into()));
    let convert = source.is_none_or(|s| s.has_ip_version_field() != target.has_ip_version_field());
    if convert && let Some(ips) = obj.get_mut("ips").and_then(Json::as_array_mut) {
        for (i, ip) in ips.iter_mut().enumerate() {
            let Some(ip) = ip.as_object_mut() else {
                return Err(invalid(format!("prevResult.ips[{i}]"), "is not an object"));
            };
            if target.has_ip_version_field() {
                let family = ip
                    .get("address")
                    .and_then(Json::as_str)
                    .and_then(parse_address)
                    .map(|a| if a.is_ipv4() { "4" } else { "6" })
                    .ok_or_else(|| {
                        invalid(
                            format!("prevResult.ips[{i}].address"),
                            "is not an IP address",
                        )
                    })?;
                ip.insert_front("version", Json::String(family.into()));
            } else {
                ip.remove("version");
            }
        }
    }
    value
        .to_vec_indented(b"")
        .map_err(|e| invalid("prevResult".into(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    /// Verbatim output of Debian's `bridge` plugin (1.1.1) with host-local, dual stack,
    /// cniVersion 1.0.0, on this machine.
    const BRIDGE_1_0_0: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"f6:7d:ab:0c:31:36"},{"name":"vethed626701","mac":"d2:22:cc:49:64:ce"},{"name":"eth0","mac":"e2:9c:e9:64:9c:d2","sandbox":"/run/netns/cnitest-pod"}],"ips":[{"interface":2,"address":"10.99.0.2/24","gateway":"10.99.0.1"},{"interface":2,"address":"fd00:99::2/64","gateway":"fd00:99::1"}],"dns":{}}"#;

    /// The same plugin with cniVersion 0.4.0.
    const BRIDGE_0_4_0: &str = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"f6:7d:ab:0c:31:36"},{"name":"vethd3e7891b","mac":"1e:41:fd:35:87:7a"},{"name":"eth0","mac":"86:9b:91:c4:68:c9","sandbox":"/run/netns/cnitest-pod2"}],"ips":[{"version":"4","interface":2,"address":"10.99.0.3/24","gateway":"10.99.0.1"},{"version":"6","interface":2,"address":"fd00:99::3/64","gateway":"fd00:99::1"}],"dns":{}}"#;

    #[test]
    fn bridge_result_yields_the_veth_not_the_bridge() {
        let n = inspect(&raw(BRIDGE_1_0_0), "eth0").unwrap();
        assert_eq!(n.host_interface.as_deref(), Some("vethed626701"));
        assert_eq!(
            n.ips,
            vec![
                "10.99.0.2".parse::<IpAddr>().unwrap(),
                "fd00:99::2".parse().unwrap()
            ]
        );
        assert_eq!(n.cni_version.as_deref(), Some("1.0.0"));
        let n = inspect(&raw(BRIDGE_0_4_0), "eth0").unwrap();
        assert_eq!(n.host_interface.as_deref(), Some("vethd3e7891b"));
        assert_eq!(n.ips.len(), 2);
    }

    #[test]
    fn ptp_result_without_ip_pointers_yields_its_veth() {
        let ptp = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"veth1a2b3c4d","mac":"aa:bb:cc:dd:ee:01"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:02","sandbox":"/var/run/netns/cni-1234"}],"ips":[{"version":"4","address":"10.244.0.7/24","gateway":"10.244.0.1"}]}"#;
        let n = inspect(&raw(ptp), "eth0").unwrap();
        assert_eq!(n.host_interface.as_deref(), Some("veth1a2b3c4d"));
        assert_eq!(n.ips, vec!["10.244.0.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn interfaces_appended_after_the_pod_interface_are_ignored() {
        // bridge, then bandwidth's ifb device.
        let r = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/p"},{"name":"bwp1234"}],"ips":[{"interface":2,"address":"10.0.0.2/24"}]}"#;
        assert_eq!(
            inspect(&raw(r), "eth0").unwrap().host_interface.as_deref(),
            Some("veth1")
        );
    }

    #[test]
    fn macvlan_result_has_no_host_interface() {
        let r = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"interface":0,"address":"192.168.1.20/24"}]}"#;
        let n = inspect(&raw(r), "eth0").unwrap();
        assert_eq!(n.host_interface, None);
        assert_eq!(n.ips.len(), 1);
    }

    #[test]
    fn the_pod_interface_is_found_by_ifname_when_ips_do_not_point() {
        let r = r#"{"interfaces":[{"name":"br0"},{"name":"vethA"},{"name":"net1","sandbox":"/p"},{"name":"vethB"},{"name":"eth0","sandbox":"/p"}],"ips":[{"address":"10.0.0.9/24"}]}"#;
        assert_eq!(
            inspect(&raw(r), "eth0").unwrap().host_interface.as_deref(),
            Some("vethB")
        );
        assert_eq!(
            inspect(&raw(r), "net1").unwrap().host_interface.as_deref(),
            Some("vethA")
        );
    }

    #[test]
    fn addresses_on_host_interfaces_are_not_pod_addresses() {
        let r = r#"{"interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/p"}],"ips":[{"interface":0,"address":"10.0.0.1/24"},{"interface":2,"address":"10.0.0.2/24"},{"interface":2,"address":"10.0.0.2/24"}]}"#;
        assert_eq!(
            inspect(&raw(r), "eth0").unwrap().ips,
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn bad_addresses_and_pointers_name_the_field() {
        let e = inspect(&raw(r#"{"ips":[{"address":"10.0.0.300/24"}]}"#), "eth0").unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("prevResult.ips[0].address"), "{e}");
        let e = inspect(&raw(r#"{"ips":[{"address":"10.0.0.3/33"}]}"#), "eth0").unwrap_err();
        assert!(e.to_string().contains("prevResult.ips[0].address"), "{e}");
        let e = inspect(
            &raw(r#"{"interfaces":[],"ips":[{"address":"10.0.0.3/24","interface":0}]}"#),
            "eth0",
        )
        .unwrap_err();
        assert!(e.to_string().contains("prevResult.ips[0].interface"), "{e}");
    }

    #[test]
    fn same_version_is_echoed_byte_for_byte() {
        let spaced = "{ \"cniVersion\" : \"1.0.0\",\n  \"ips\": [], \"zzz\": {\"b\":1, \"a\":2} }";
        let out = render(&raw(spaced), Some("1.0.0"), Version::V1_0_0).unwrap();
        assert_eq!(out, spaced.as_bytes());
    }

    #[test]
    fn a_0_4_0_result_converts_to_1_0_0_by_dropping_ip_versions() {
        let out = render(&raw(BRIDGE_0_4_0), Some("0.4.0"), Version::V1_0_0).unwrap();
        let want = BRIDGE_0_4_0
            .replace("\"cniVersion\":\"0.4.0\"", "\"cniVersion\":\"1.0.0\"")
            .replace("\"version\":\"4\",", "")
            .replace("\"version\":\"6\",", "");
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn a_1_0_0_result_converts_to_0_3_1_by_adding_ip_versions() {
        let out = render(&raw(BRIDGE_1_0_0), Some("1.0.0"), Version::V0_3_1).unwrap();
        let want = BRIDGE_1_0_0
            .replace("\"cniVersion\":\"1.0.0\"", "\"cniVersion\":\"0.3.1\"")
            .replace(
                "{\"interface\":2,\"address\":\"10.",
                "{\"version\":\"4\",\"interface\":2,\"address\":\"10.",
            )
            .replace(
                "{\"interface\":2,\"address\":\"fd",
                "{\"version\":\"6\",\"interface\":2,\"address\":\"fd",
            );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn same_format_family_only_restamps_the_version() {
        let out = render(&raw(BRIDGE_1_0_0), Some("1.0.0"), Version::V1_1_0).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            BRIDGE_1_0_0.replace("\"cniVersion\":\"1.0.0\"", "\"cniVersion\":\"1.1.0\"")
        );
    }

    #[test]
    fn a_result_without_version_gets_the_requested_one() {
        let out = render(
            &raw(r#"{"ips":[{"address":"10.0.0.2/24"}]}"#),
            None,
            Version::V0_4_0,
        )
        .unwrap();
        assert_eq!(
            out,
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.2/24"}]}"#
        );
    }

    #[test]
    fn an_unconvertible_prev_result_version_is_code_1() {
        let e = render(
            &raw(r#"{"cniVersion":"0.2.0","ip4":{}}"#),
            Some("0.2.0"),
            Version::V1_0_0,
        )
        .unwrap_err();
        assert_eq!(e.code(), 1);
    }
}
