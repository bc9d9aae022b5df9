//! Real traffic between namespaces: echo servers, probes, spoofed datagrams, floods.
//!
//! Everything here is sockets opened by threads that entered a namespace (no external
//! programs), so hundreds of probes run concurrently in a few milliseconds of setup. A probe
//! says whether a connection got through ([`Outcome::Connected`]: a TCP handshake plus an echo
//! of our data, a UDP echo, an ICMP echo reply) or not, and how not: a timeout means the
//! packets were dropped ([`Outcome::Blocked`]), a reset or port unreachable that something
//! answered ([`Outcome::Refused`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::{Netns, NetnsError};

/// Transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP / ICMPv6 echo; the port is ignored.
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The exchange completed: TCP handshake and echo, UDP echo, ICMP echo reply.
    Connected,
    /// No answer before the timeout (dropped somewhere), or a local netfilter drop (EPERM).
    Blocked,
    /// Actively refused: TCP reset or ICMP port unreachable (something answered).
    Refused,
    /// ICMP host or network unreachable, or no route.
    Unreachable,
}

impl Outcome {
    /// One character for grids: `+` connected, `-` blocked, `R` refused, `U` unreachable.
    pub fn symbol(self) -> char {
        match self {
            Outcome::Connected => '+',
            Outcome::Blocked => '-',
            Outcome::Refused => 'R',
            Outcome::Unreachable => 'U',
        }
    }
}

impl From<bool> for Outcome {
    /// `true` is [`Outcome::Connected`], `false` [`Outcome::Blocked`].
    fn from(connected: bool) -> Outcome {
        if connected {
            Outcome::Connected
        } else {
            Outcome::Blocked
        }
    }
}

/// A probe's outcome with the detail behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    /// The error that decided a failure, or what was odd about a success.
    pub detail: Option<String>,
    pub elapsed: Duration,
}

/// What to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub proto: Proto,
    /// Destination; the port is ignored for ICMP.
    pub to: SocketAddr,
    /// Bind to this source address. It need not be an address of the namespace: the socket
    /// is made transparent (`IP_TRANSPARENT`), so the packet leaves with a forged source, as
    /// a malicious pod with `NET_RAW` could send it. Answers to a forged source go to its real
    /// owner, so such a probe cannot complete; to see whether forged packets arrive, use
    /// [`spoof_probe`].
    pub source: Option<IpAddr>,
    pub timeout: Duration,
}

impl Probe {
    pub fn new(proto: Proto, to: IpAddr, port: u16, timeout: Duration) -> Probe {
        Probe {
            proto,
            to: SocketAddr::new(to, port),
            source: None,
            timeout,
        }
    }

    /// The same probe from a given (possibly forged) source address.
    pub fn from_source(mut self, source: IpAddr) -> Probe {
        self.source = Some(source);
        self
    }

    /// Runs the probe on the calling thread, which must already be inside the source
    /// namespace (see [`Netns::run`]); [`probe`] does that for you.
    pub fn run_here(&self) -> ProbeResult {
        let start = Instant::now();
        let (outcome, detail) = match self.proto {
            Proto::Tcp => tcp_probe(self),
            Proto::Udp => udp_probe(self),
            Proto::Icmp => icmp_probe(self),
        };
        ProbeResult {
            outcome,
            detail,
            elapsed: start.elapsed(),
        }
    }
}

/// Anything traffic can start from: a pod, a node, an external host, a bare namespace.
pub trait Endpoint: Sync {
    fn netns(&self) -> &Netns;
    /// A short name for grids and messages (`ns/pod`, `node-0`).
    fn label(&self) -> String;
}

impl Endpoint for Netns {
    fn netns(&self) -> &Netns {
        self
    }
    fn label(&self) -> String {
        self.name().to_string()
    }
}

impl<T: Endpoint + ?Sized + Send> Endpoint for Arc<T> {
    fn netns(&self) -> &Netns {
        (**self).netns()
    }
    fn label(&self) -> String {
        (**self).label()
    }
}

/// One probe from `from` to `to:port`. Setup failures (the namespace is gone) count as
/// [`Outcome::Blocked`] with the error as detail; see [`probe_detailed`].
pub fn probe(
    from: &(impl Endpoint + ?Sized),
    to: IpAddr,
    proto: Proto,
    port: u16,
    timeout: Duration,
) -> Outcome {
    probe_detailed(from.netns(), &Probe::new(proto, to, port, timeout)).outcome
}

/// One probe from a namespace, with its detail.
pub fn probe_detailed(from: &Netns, probe: &Probe) -> ProbeResult {
    match from.run(|| probe.run_here()) {
        Ok(result) => result,
        Err(e) => ProbeResult {
            outcome: Outcome::Blocked,
            detail: Some(format!("probe not run: {e}")),
            elapsed: Duration::ZERO,
        },
    }
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A unique payload line, so that every echo can be matched to its probe.
pub fn nonce() -> String {
    format!(
        "nftpol-e2e {} {}\n",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::Relaxed)
    )
}

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => return Outcome::Blocked,
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            return Outcome::Refused;
        }
        _ => {}
    }
    match e.raw_os_error() {
        // A netfilter drop in the sender's own output path.
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => Outcome::Blocked,
        Some(nix::libc::ECONNREFUSED) => Outcome::Refused,
        _ => Outcome::Unreachable,
    }
}

fn fail(e: &io::Error, what: &str) -> (Outcome, Option<String>) {
    (classify(e), Some(format!("{what}: {e}")))
}

fn new_socket(proto: Proto, to: &SocketAddr, source: Option<IpAddr>) -> io::Result<Socket> {
    let domain = Domain::for_address(*to);
    let (ty, protocol) = match (proto, to) {
        (Proto::Tcp, _) => (Type::STREAM, Protocol::TCP),
        (Proto::Udp, _) => (Type::DGRAM, Protocol::UDP),
        (Proto::Icmp, SocketAddr::V4(_)) => (Type::DGRAM, Protocol::ICMPV4),
        (Proto::Icmp, SocketAddr::V6(_)) => (Type::DGRAM, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    if let Some(src) = source {
        match src {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    Ok(socket)
}

fn tcp_probe(p: &Probe) -> (Outcome, Option<String>) {
    let deadline = Instant::now() + p.timeout;
    let socket = match new_socket(Proto::Tcp, &p.to, p.source) {
        Ok(s) => s,
        Err(e) => return (Outcome::Unreachable, Some(format!("socket: {e}"))),
    };
    if let Err(e) = socket.connect_timeout(&p.to.into(), p.timeout) {
        return fail(&e, "connect");
    }
    let mut stream: TcpStream = socket.into();
    let line = nonce();
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    if let Err(e) = stream
        .set_read_timeout(Some(remaining))
        .and_then(|()| stream.set_write_timeout(Some(remaining)))
        .and_then(|()| stream.write_all(line.as_bytes()))
    {
        return fail(&e, "send after connect");
    }
    let mut buf = Vec::with_capacity(line.len());
    let mut chunk = [0u8; 256];
    while buf.len() < line.len() {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return (
                    Outcome::Blocked,
                    Some("connected, but the server closed without echoing".into()),
                );
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return fail(&e, "connected, but no echo"),
        }
    }
    if buf == line.as_bytes() {
        (Outcome::Connected, None)
    } else {
        (
            Outcome::Blocked,
            Some(format!(
                "connected, but the echo differs: {:?}",
                String::from_utf8_lossy(&buf)
            )),
        )
    }
}

fn udp_probe(p: &Probe) -> (Outcome, Option<String>) {
    let deadline = Instant::now() + p.timeout;
    let socket = match new_socket(Proto::Udp, &p.to, p.source) {
        Ok(s) => s,
        Err(e) => return (Outcome::Unreachable, Some(format!("socket: {e}"))),
    };
    if let Err(e) = socket.connect(&p.to.into()) {
        return fail(&e, "connect");
    }
    let line = nonce();
    // Resend now and then: the first datagram may wait for neighbour resolution.
    let resend = Duration::from_millis(250);
    let mut buf = [0u8; 512];
    loop {
        if let Err(e) = socket.send(line.as_bytes()) {
            return fail(&e, "send");
        }
        let round_end = (Instant::now() + resend).min(deadline);
        loop {
            let now = Instant::now();
            if now >= round_end {
                break;
            }
            if let Err(e) = socket.set_read_timeout(Some(round_end - now)) {
                return fail(&e, "set timeout");
            }
            match recv(&socket, &mut buf) {
                Ok(n) if &buf[..n] == line.as_bytes() => return (Outcome::Connected, None),
                Ok(_) => continue, // an echo of an earlier round
                Err(e) if classify(&e) == Outcome::Blocked => break,
                Err(e) => return fail(&e, "receive"),
            }
        }
        if Instant::now() >= deadline {
            return (Outcome::Blocked, Some("no echo before the timeout".into()));
        }
    }
}

fn icmp_probe(p: &Probe) -> (Outcome, Option<String>) {
    let deadline = Instant::now() + p.timeout;
    let to = SocketAddr::new(p.to.ip(), 0);
    let socket = match new_socket(Proto::Icmp, &to, p.source) {
        Ok(s) => s,
        Err(e) => return (Outcome::Unreachable, Some(format!("icmp socket: {e}"))),
    };
    if let Err(e) = socket.connect(&to.into()) {
        return fail(&e, "connect");
    }
    let (request, reply) = if to.is_ipv4() {
        (8u8, 0u8)
    } else {
        (128u8, 129u8)
    };
    let payload = nonce();
    // Echo header: type, code, checksum, identifier, sequence. The kernel fills in the
    // identifier and the checksum of ping sockets.
    let mut packet = vec![request, 0, 0, 0, 0, 0, 0, 1];
    packet.extend_from_slice(payload.as_bytes());
    if let Err(e) = socket.send(&packet) {
        return fail(&e, "send echo request");
    }
    let mut buf = [0u8; 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (
                Outcome::Blocked,
                Some("no echo reply before the timeout".into()),
            );
        }
        if let Err(e) = socket.set_read_timeout(Some(deadline - now)) {
            return fail(&e, "set timeout");
        }
        match recv(&socket, &mut buf) {
            Ok(n) if n >= 8 && buf[0] == reply && &buf[8..n] == payload.as_bytes() => {
                return (Outcome::Connected, None);
            }
            Ok(_) => continue,
            Err(e) => return fail(&e, "receive echo reply"),
        }
    }
}

fn recv(socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    // `Read for &Socket` is recv(2) into initialised memory.
    let mut reader = socket;
    reader.read(buf)
}

/// Sends one UDP datagram from `from` with a forged source address `source` (need not belong
/// to the namespace) to `to`. Use it with [`Server::wait_received`] on the destination to see
/// whether the packet arrived: no reply can come back to a forged source.
pub fn send_spoofed_udp(
    from: &Netns,
    source: IpAddr,
    to: SocketAddr,
    payload: &[u8],
) -> Result<(), NetnsError> {
    let name = from.name().to_string();
    from.run(|| {
        let socket = new_socket(Proto::Udp, &to, Some(source))?;
        socket.send_to(payload, &SockAddr::from(to)).map(drop)
    })?
    .map_err(|source| NetnsError::Io {
        name,
        what: format!("sending a spoofed datagram to {to}"),
        source,
    })
}

/// Sends one bare TCP SYN (no ACK, no options, window 64240) from `from` with source `src`
/// (address and port, an address of the namespace) to `to`, through a raw socket: no socket of
/// the namespace owns the connection, so the kernel neither retransmits nor completes it. This
/// is what a client reopening a connection from the same port sends, and conntrack may still
/// track the old connection. Count what arrives on the receiving side (an nft counter there).
pub fn send_bare_syn(
    from: &Netns,
    src: SocketAddr,
    to: SocketAddr,
    seq: u32,
) -> Result<(), NetnsError> {
    let name = from.name().to_string();
    from.run(|| {
        let domain = Domain::for_address(to);
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::TCP))?;
        socket.bind(&SockAddr::from(SocketAddr::new(src.ip(), 0)))?;
        let segment = tcp_syn_segment(src, to, seq)
            .ok_or_else(|| io::Error::other("source and destination families differ"))?;
        // Raw IPv4 and IPv6 sockets take the port field as 0 (the protocol is the socket's).
        socket
            .send_to(&segment, &SockAddr::from(SocketAddr::new(to.ip(), 0)))
            .map(drop)
    })?
    .map_err(|source| NetnsError::Io {
        name,
        what: format!("sending a bare SYN {src} -> {to}"),
        source,
    })
}

/// A 20-byte TCP header with only SYN set and its checksum over the pseudo-header.
fn tcp_syn_segment(src: SocketAddr, dst: SocketAddr, seq: u32) -> Option<[u8; 20]> {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&src.port().to_be_bytes());
    h[2..4].copy_from_slice(&dst.port().to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words, no options
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(40 + h.len());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            pseudo.extend_from_slice(&a.octets());
            pseudo.extend_from_slice(&b.octets());
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            pseudo.extend_from_slice(&a.octets());
            pseudo.extend_from_slice(&b.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        }
        _ => return None,
    }
    pseudo.extend_from_slice(&h);
    let mut sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Some(h)
}

/// Whether a UDP datagram sent from `from` with forged source `forged` reaches the UDP server
/// that `to` runs on `port` (started with [`Netns::serve`]) at address `to_ip`.
/// [`Outcome::Connected`] means it arrived there with that source.
pub fn spoof_probe(
    from: &(impl Endpoint + ?Sized),
    forged: IpAddr,
    to: &(impl Endpoint + ?Sized),
    to_ip: IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<Outcome, NetnsError> {
    let server = to
        .netns()
        .server(Proto::Udp, port)
        .ok_or_else(|| NetnsError::Io {
            name: to.netns().name().to_string(),
            what: format!("spoof probe needs a udp server on port {port}"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    let payload = nonce();
    send_spoofed_udp(
        from.netns(),
        forged,
        SocketAddr::new(to_ip, port),
        payload.as_bytes(),
    )?;
    let got = server.wait_received(
        |r| r.payload == payload.as_bytes() && r.peer.ip() == forged,
        timeout,
    );
    Ok(Outcome::from(got.is_some()))
}

/// What a server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The peer as the server saw it (IPv4-mapped addresses are turned back into IPv4).
    pub peer: SocketAddr,
    pub payload: Vec<u8>,
    pub at: Instant,
}

/// An echo server in a namespace; see [`Netns::serve`].
pub struct Server {
    proto: Proto,
    port: u16,
    netns: String,
    log: Mutex<Vec<Received>>,
    arrived: Condvar,
    stopping: AtomicBool,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Server({} {}/{})", self.netns, self.proto, self.port)
    }
}

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Received records kept per server.
const LOG_LIMIT: usize = 100_000;

impl Server {
    pub(crate) fn start(netns: &Netns, proto: Proto, port: u16) -> Result<Arc<Server>, NetnsError> {
        let io_err = |what: String, source| NetnsError::Io {
            name: netns.name().to_string(),
            what,
            source,
        };
        if proto == Proto::Icmp {
            return Err(io_err(
                "serving icmp".into(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the kernel answers echo requests",
                ),
            ));
        }
        let socket = netns
            .run(|| listen(proto, port))?
            .map_err(|e| io_err(format!("binding {proto} port {port}"), e))?;
        let server = Arc::new(Server {
            proto,
            port,
            netns: netns.name().to_string(),
            log: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let worker = server.clone();
        let handle = thread::Builder::new()
            .name(format!("{} {proto}/{port}", netns.name()))
            .spawn(move || match worker.proto {
                Proto::Tcp => worker.tcp_loop(socket),
                _ => worker.udp_loop(socket),
            })
            .map_err(|e| io_err("starting server thread".into(), e))?;
        *server.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(server)
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether anything from `peer` has been received.
    pub fn received_from(&self, peer: IpAddr) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.peer.ip() == peer)
    }

    /// Waits until a received record matches `pred`, up to `timeout`.
    pub fn wait_received(
        &self,
        pred: impl Fn(&Received) -> bool,
        timeout: Duration,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = log.iter().find(|r| pred(r)) {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            log = self
                .arrived
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Asks the server to stop without waiting (see [`Server::stop`]).
    pub(crate) fn signal_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops the server and waits for its thread. Idempotent.
    pub fn stop(&self) {
        self.signal_stop();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if handle.is_some_and(|h| h.join().is_err()) {
            tracing::warn!(server = ?self, "server thread panicked");
        }
    }

    fn record(&self, peer: SocketAddr, payload: &[u8]) {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= LOG_LIMIT {
            log.remove(0);
        }
        log.push(Received {
            peer,
            payload: payload.to_vec(),
            at: Instant::now(),
        });
        self.arrived.notify_all();
    }

    fn tcp_loop(self: Arc<Self>, listener: Socket) {
        let listener: std::net::TcpListener = listener.into();
        while !self.stopping.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    let me = self.clone();
                    // One thread per connection: a silent client must not stall the others.
                    let spawned = thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || me.tcp_echo(conn, peer));
                    if let Err(e) = spawned {
                        tracing::warn!(server = ?self, error = %e, "cannot handle connection");
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(server = ?self, error = %e, "accept failed");
                    thread::sleep(POLL);
                }
            }
        }
    }

    fn tcp_echo(&self, mut stream: TcpStream, peer: SocketAddr) {
        let mut line = Vec::new();
        let mut byte = [0u8; 256];
        if stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .is_err()
        {
            return;
        }
        while !line.ends_with(b"\n") && line.len() < 4096 {
            match stream.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(n) => line.extend_from_slice(&byte[..n]),
            }
        }
        self.record(peer, &line);
        // The client may already be gone; that is its business.
        let _ = stream.write_all(&line);
    }

    fn udp_loop(self: Arc<Self>, socket: Socket) {
        let socket: std::net::UdpSocket = socket.into();
        let mut buf = [0u8; 65536];
        while !self.stopping.load(Ordering::SeqCst) {
            match socket.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    self.record(peer, &buf[..n]);
                    if let Err(e) = socket.send_to(&buf[..n], peer) {
                        tracing::debug!(server = ?self, error = %e, "echo failed");
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    tracing::debug!(server = ?self, error = %e, "receive failed");
                }
            }
        }
    }
}

/// Binds `[::]:port` for both families (the kernel maps IPv4 peers into IPv6).
fn listen(proto: Proto, port: u16) -> io::Result<Socket> {
    let (ty, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        _ => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(Domain::IPV6, ty, Some(protocol))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    if proto == Proto::Tcp {
        socket.listen(1024)?;
    }
    // accept() and recv() honour SO_RCVTIMEO: that is how the loops notice `stop`.
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// A background prober that tries to reach `to` over and over and records every success:
/// proof that something was never reachable during a window (e.g. a new pod before its
/// policy is in place).
pub struct Flood {
    stopping: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<Vec<Instant>>>,
    attempts: Arc<AtomicU64>,
    started: Instant,
    target: SocketAddr,
    proto: Proto,
}

/// What a [`Flood`] saw.
#[derive(Debug, Clone)]
pub struct FloodReport {
    pub target: SocketAddr,
    pub proto: Proto,
    pub attempts: u64,
    /// When each successful attempt completed, sorted.
    pub successes: Vec<Instant>,
    pub started: Instant,
    pub stopped: Instant,
}

impl FloodReport {
    /// The first success, if any.
    pub fn first_success(&self) -> Option<Instant> {
        self.successes.first().copied()
    }

    /// Successes before `t` (e.g. before the policy was applied).
    pub fn successes_before(&self, t: Instant) -> usize {
        self.successes.iter().filter(|s| **s < t).count()
    }
}

impl Flood {
    /// Starts `workers` threads in `from`'s namespace, each probing `to` in a loop with
    /// `attempt_timeout` per attempt; staggered so that a new attempt starts about every
    /// `attempt_timeout / workers`.
    pub fn start(
        from: &(impl Endpoint + ?Sized),
        proto: Proto,
        to: SocketAddr,
        attempt_timeout: Duration,
        workers: usize,
    ) -> Result<Flood, NetnsError> {
        let stopping = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let workers = workers.max(1);
        let stagger = attempt_timeout / u32::try_from(workers).unwrap_or(u32::MAX);
        let mut handles = Vec::with_capacity(workers);
        let probe = Probe {
            proto,
            to,
            source: None,
            timeout: attempt_timeout,
        };
        for i in 0..workers {
            let stop = stopping.clone();
            let attempts = attempts.clone();
            let spawned = from.netns().spawn(&format!("flood {to} #{i}"), move || {
                thread::sleep(stagger * u32::try_from(i).unwrap_or(0));
                let mut successes = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let result = probe.run_here();
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match result.outcome {
                        Outcome::Connected => successes.push(Instant::now()),
                        // Failures that return at once (refused, unreachable) would spin.
                        _ if result.elapsed < attempt_timeout / 4 => {
                            thread::sleep(attempt_timeout / 4);
                        }
                        _ => {}
                    }
                }
                successes
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stopping.store(true, Ordering::SeqCst);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Flood {
            stopping,
            workers: handles,
            attempts,
            started: Instant::now(),
            target: to,
            proto,
        })
    }

    /// Stops all workers and reports.
    pub fn stop(mut self) -> FloodReport {
        self.finish()
    }

    fn finish(&mut self) -> FloodReport {
        self.stopping.store(true, Ordering::SeqCst);
        let mut successes = Vec::new();
        for h in self.workers.drain(..) {
            match h.join() {
                Ok(s) => successes.extend(s),
                Err(_) => tracing::warn!(target = %self.target, "flood worker panicked"),
            }
        }
        successes.sort();
        FloodReport {
            target: self.target,
            proto: self.proto,
            attempts: self.attempts.load(Ordering::Relaxed),
            successes,
            started: self.started,
            stopped: Instant::now(),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.finish();
        }
    }
}
