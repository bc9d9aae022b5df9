//! Kernel tests of how nftpol's table treats connections conntrack already tracks.
//!
//! Replies and later packets of an allowed connection pass on `ct state established,related`,
//! so a connection opened under a policy survives when the policy tightens (as with iptables-
//! and nftables-based peers). But conntrack also labels *a new SYN* `established` when it reuses
//! the addresses and ports of a connection it still tracks (it lets the SYN through to resync
//! with the endpoints). Such a SYN opens a new connection, and nftpol judges it by the policy
//! in force now. These tests prove both halves with real packets, IPv4 same-node and IPv6
//! cross-node, using the fixture cluster of `apply_support`.
//!
//! Needs root and the built binary; skips loudly otherwise.

mod apply_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use apply_support::*;
use nftpol_e2e::{Family, Outcome, Probe, Proto, probe_detailed, send_bare_syn, skip_unless_root};
use socket2::{Domain, Socket, Type};

/// x/a admits x/c (same node) and y/a (the other node) on TCP 80.
const ALLOW: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels: { pod: a }
  ingress:
  - from:
    - podSelector:
        matchLabels: { pod: c }
    - namespaceSelector:
        matchLabels: { team: blue }
      podSelector:
        matchLabels: { pod: a }
    ports:
    - port: 80
"#;

/// The same policy with nothing admitted: x/a is isolated for ingress.
const DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: x
spec:
  podSelector:
    matchLabels: { pod: a }
  policyTypes: [Ingress]
"#;

/// Client ports: the long-lived connections, and the control SYN of each family.
const HELD_PORT: u16 = 40123;
const CONTROL_PORT: u16 = 40125;

/// A TCP connection from a fixed source port, opened inside a namespace and held open
/// without sending (the echo server waits 5 s for its line).
fn connect_from(fx: &Fixture, client: &str, src: SocketAddr, to: SocketAddr) -> TcpStream {
    fx.pod(client)
        .netns
        .run(|| {
            let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&src.into())?;
            s.connect_timeout(&to.into(), Duration::from_secs(2))?;
            Ok::<TcpStream, std::io::Error>(s.into())
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("{client}: connect {src} -> {to}: {e}"))
}

/// Sends a line on a held connection and reads the echo back.
fn echo(stream: &mut TcpStream) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"still here\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {got:?}")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    (got == b"still here\n")
        .then_some(())
        .ok_or_else(|| format!("echo differs: {got:?}"))
}

/// Counter of the rule with `comment` in a namespace's `nft list ruleset`.
fn packets(fx: &Fixture, pod: &str, comment: &str) -> u64 {
    let listing = fx.pod(pod).netns.ruleset().unwrap();
    counter_of(&listing, comment).0
}

/// Polls until `f` holds or `within` passes; returns whether it held.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_held_connection_survives_a_tightened_policy_but_a_new_syn_on_its_ports_meets_the_policy() {
    skip_unless_root!(
        "a_held_connection_survives_a_tightened_policy_but_a_new_syn_on_its_ports_meets_the_policy"
    );
    let fx = Fixture::new("ap-ct");
    // (client, family): same-node IPv4, cross-node IPv6.
    let cases = [("x/c", Family::V4, "v4"), ("y/a", Family::V6, "v6")];
    let to = |f: Family| SocketAddr::new(ip(&fx, "x/a", f), 80);
    let from = |client: &str, f: Family, port: u16| SocketAddr::new(ip(&fx, client, f), port);

    // Count bare SYNs arriving at x/a per client, and SYN-ACKs arriving back at each client.
    let mut counting = String::from(
        "table inet synprobe {\n chain input {\n  type filter hook input priority 0; policy accept;\n",
    );
    for (client, f, tag) in cases {
        let l3 = if f == Family::V4 { "ip" } else { "ip6" };
        let src = ip(&fx, client, f);
        counting.push_str(&format!(
            "  {l3} saddr {src} tcp dport 80 tcp flags syn / syn,ack counter comment \"syn {tag}\"\n"
        ));
    }
    counting.push_str(" }\n}\n");
    fx.pod("x/a").netns.nft_apply(&counting).unwrap();
    for (client, _, tag) in cases {
        fx.pod(client)
            .netns
            .nft_apply(&format!(
                "table inet synprobe {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  tcp sport 80 tcp flags syn,ack / syn,ack counter comment \"synack {tag}\"\n }}\n}}\n"
            ))
            .unwrap();
    }

    for s in fx.apply(ALLOW) {
        assert!(s.changed, "{}: nothing applied", s.node);
    }
    // Control: a bare SYN the policy allows reaches x/a, which answers it (so the forged
    // segments are well formed and counted where they arrive).
    for (client, f, tag) in cases {
        let syns = packets(&fx, "x/a", &format!("syn {tag}"));
        let synacks = packets(&fx, client, &format!("synack {tag}"));
        send_bare_syn(
            &fx.pod(client).netns,
            from(client, f, CONTROL_PORT),
            to(f),
            0x1234_5678,
        )
        .unwrap();
        assert!(
            eventually(Duration::from_secs(2), || packets(
                &fx,
                client,
                &format!("synack {tag}")
            ) > synacks),
            "{client} ({tag}): an allowed bare SYN got no SYN-ACK"
        );
        assert_eq!(packets(&fx, "x/a", &format!("syn {tag}")), syns + 1);
    }

    // Connections held open across the change (the echo server waits 5 s for their line).
    let opened = Instant::now();
    let mut held: Vec<TcpStream> = cases
        .iter()
        .map(|(client, f, _)| connect_from(&fx, client, from(client, *f, HELD_PORT), to(*f)))
        .collect();

    // The policy tightens: x/a admits nobody.
    for s in fx.apply(DENY) {
        if s.node == "node-0" {
            assert!(s.changed, "node-0: nothing applied");
        }
    }
    for (i, (client, f, tag)) in cases.iter().enumerate() {
        let syns = packets(&fx, "x/a", &format!("syn {tag}"));
        // A new SYN from the held connection's ports: conntrack calls it established.
        send_bare_syn(
            &fx.pod(client).netns,
            from(client, *f, HELD_PORT),
            to(*f),
            0x0bad_cafe,
        )
        .unwrap();
        // And an ordinary new connection from another port.
        let fresh = probe_detailed(
            &fx.pod(client).netns,
            &Probe::new(Proto::Tcp, to(*f).ip(), 80, Duration::from_millis(500)),
        );
        assert_eq!(
            fresh.outcome,
            Outcome::Blocked,
            "{client} ({tag}): a new connection after the tightening: {:?}",
            fresh.detail
        );
        assert_eq!(
            packets(&fx, "x/a", &format!("syn {tag}")),
            syns,
            "{client} ({tag}): a SYN reached x/a after its policy stopped admitting {client}"
        );
        // The connection opened before the change keeps working.
        echo(&mut held[i])
            .unwrap_or_else(|e| panic!("{client} ({tag}): the held connection broke: {e}"));
    }
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "too slow for the echo server's 5 s read timeout: {:?}",
        opened.elapsed()
    );
    let table = fx.cluster.node(0).netns.ruleset().unwrap();
    assert!(
        table.contains("tcp flags != syn / syn,ack accept comment"),
        "the established rule lost its SYN exception:\n{table}"
    );
}
