//! Network namespaces the harness creates, enters and always removes.
//!
//! A [`Netns`] is a named namespace (`/run/netns/<name>`, as `ip netns add` makes it) plus a
//! guard: the namespace is deleted when the last clone of the handle is dropped or when
//! [`Netns::delete`] is called, whichever comes first. Servers and processes started in it are
//! stopped before it goes, so no thread or program of ours outlives its namespace.
//!
//! Names are `<prefix>-<pid>-<seq>-<role>` ([`unique_name`]): unique per test process, so tests
//! run in parallel, and recognisable, so [`cleanup_stale`] can remove what a crashed earlier
//! run with the same prefix left behind (its pid no longer exists).
//!
//! Code runs inside a namespace in two ways: programs through `ip netns exec` ([`Netns::exec`],
//! [`Netns::command`]) and closures on a dedicated thread that has called
//! `setns(CLONE_NEWNET)` ([`Netns::run`], [`Netns::spawn`]). A thread's network namespace
//! decides where the sockets it creates live and which `/proc/sys/net` it sees.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::cmd::{self, CmdError, Output};
use crate::process::Process;
use crate::traffic::{Proto, Server};

/// Where `ip netns add` puts namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Where the harness keeps per-cluster state (host-local leases, CNI result cache, conflists).
pub const STATE_ROOT: &str = "/run/nftpol-e2e";

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("invalid namespace name or prefix {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("namespace {name}: {source}")]
    Command {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("namespace {name}: cannot open {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace {name}: setns failed: {source}")]
    Setns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("namespace {name}: sysctl {key}: {source}")]
    Sysctl {
        name: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("namespace {name}: cannot start thread: {source}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("namespace {name}: {what}: {source}")]
    Io {
        name: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("namespace {name} has been deleted")]
    Deleted { name: String },
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh name `<prefix>-<pid>-<seq>-<role>` (or `<prefix>-<pid>-<seq>` when `role` is
/// empty). `prefix` should name the test; see [`validate_prefix`].
pub fn unique_name(prefix: &str, role: &str) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    if role.is_empty() {
        format!("{prefix}-{pid}-{seq}")
    } else {
        format!("{prefix}-{pid}-{seq}-{role}")
    }
}

/// A prefix is lowercase letters, digits and `-`, starts with a letter, and has no segment of
/// digits only, so that `<prefix>-<pid>-` parses back unambiguously.
pub fn validate_prefix(prefix: &str) -> Result<(), NetnsError> {
    let bad = |reason| {
        Err(NetnsError::InvalidName {
            name: prefix.to_string(),
            reason,
        })
    };
    if prefix.is_empty() || prefix.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lowercase letter");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if prefix
        .split('-')
        .any(|seg| seg.is_empty() || seg.chars().all(|c| c.is_ascii_digit()))
    {
        return bad("no empty or all-digit '-' segments");
    }
    Ok(())
}

/// The pid encoded in a name made by [`unique_name`] with `prefix`, if it is one.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Removes namespaces (and state directories under [`STATE_ROOT`]) named with `prefix` whose
/// creating process no longer exists: leftovers of a run that crashed or was killed. Programs
/// still running inside such a namespace are killed first. Runs once per prefix per process;
/// returns the names removed. Errors are logged and skipped: cleanup must not stop a test.
pub fn cleanup_stale(prefix: &str) -> Vec<String> {
    static DONE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    {
        let mut done = DONE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !done.insert(prefix.to_string()) {
            return Vec::new();
        }
    }
    let stale = |name: &str| owner_pid(prefix, name).is_some_and(|pid| !process_alive(pid));
    let mut removed = Vec::new();
    for name in list_dir(Path::new(NETNS_DIR)) {
        if !stale(&name) {
            continue;
        }
        kill_processes_in(&name);
        match cmd::run_checked(
            Command::new("ip").args(["netns", "delete", &name]),
            None,
            cmd::DEFAULT_TIMEOUT,
        ) {
            Ok(_) => removed.push(name),
            Err(e) => tracing::warn!(netns = %name, error = %e, "cannot remove stale namespace"),
        }
    }
    for name in list_dir(Path::new(STATE_ROOT)) {
        if stale(&name) {
            let path = Path::new(STATE_ROOT).join(&name);
            match fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path.display().to_string()),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale state")
                }
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!(?removed, "removed leftovers of a crashed run");
    }
    removed
}

/// Whether `pid` is a live process (a zombie, killed but not yet reaped, is not).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may contain anything, so look after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

fn list_dir(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Kills the programs `ip netns pids` finds in a stale namespace of ours.
fn kill_processes_in(name: &str) {
    let Ok(out) = cmd::run(
        Command::new("ip").args(["netns", "pids", name]),
        None,
        cmd::DEFAULT_TIMEOUT,
    ) else {
        return;
    };
    for pid in out
        .stdout
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        tracing::info!(netns = name, pid, "killing leftover process");
        // It may have exited meanwhile; nothing else to do either way.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A network namespace of the harness; cheap to clone, deleted with the last clone (or by
/// [`Netns::delete`]).
#[derive(Clone)]
pub struct Netns(Arc<Inner>);

struct Inner {
    name: String,
    path: PathBuf,
    deleted: AtomicBool,
    servers: Mutex<Vec<Arc<Server>>>,
    processes: Mutex<Vec<Arc<Process>>>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.0.name).finish()
    }
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`), brings `lo` up, turns IPv6 duplicate address
    /// detection off (addresses are usable at once, not "tentative" for a second) and allows
    /// ICMP echo sockets for root (used by ICMP probes).
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        if name.is_empty()
            || name.len() > 200
            || name.contains('/')
            || name.starts_with('.')
            || name.contains(char::is_whitespace)
        {
            return Err(NetnsError::InvalidName {
                name: name.to_string(),
                reason: "must be 1 to 200 characters without '/', whitespace or leading '.'",
            });
        }
        let command_err = |source| NetnsError::Command {
            name: name.to_string(),
            source,
        };
        cmd::run_checked(
            Command::new("ip").args(["netns", "add", name]),
            None,
            cmd::DEFAULT_TIMEOUT,
        )
        .map_err(command_err)?;
        // From here on the guard owns the namespace and removes it on any error.
        let ns = Netns(Arc::new(Inner {
            name: name.to_string(),
            path: Path::new(NETNS_DIR).join(name),
            deleted: AtomicBool::new(false),
            servers: Mutex::new(Vec::new()),
            processes: Mutex::new(Vec::new()),
        }));
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
        ])?;
        tracing::debug!(netns = name, "created");
        Ok(ns)
    }

    /// The namespace's name (`ip netns` name).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// `/run/netns/<name>`: what `CNI_NETNS` and `setns` take.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        !self.0.deleted.load(Ordering::SeqCst) && self.0.path.exists()
    }

    /// Opens the namespace handle once, for [`Netns::enter_with`] on many threads.
    pub(crate) fn open_handle(&self) -> Result<File, NetnsError> {
        self.open()
    }

    /// Moves the calling thread into the namespace of a handle from [`Netns::open_handle`].
    pub(crate) fn enter_with(&self, handle: &File) -> Result<(), NetnsError> {
        enter(&self.0.name, handle)
    }

    fn open(&self) -> Result<File, NetnsError> {
        if self.0.deleted.load(Ordering::SeqCst) {
            return Err(NetnsError::Deleted {
                name: self.0.name.clone(),
            });
        }
        File::open(&self.0.path).map_err(|source| NetnsError::Open {
            name: self.0.name.clone(),
            path: self.0.path.clone(),
            source,
        })
    }

    /// Moves the calling thread into this namespace for good. Only for threads you own and
    /// that do nothing else afterwards ([`Netns::run`] and [`Netns::spawn`] do this for you).
    pub fn enter_current_thread(&self) -> Result<(), NetnsError> {
        let file = self.open()?;
        enter(&self.0.name, &file)
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its result. A panic in `f`
    /// is propagated to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let file = self.open()?;
        let name = self.0.name.as_str();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("netns {name}"))
                .spawn_scoped(s, move || -> Result<T, NetnsError> {
                    enter(name, &file)?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    name: name.to_string(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new thread inside the namespace. The thread has entered the namespace
    /// before this returns; the handle yields `f`'s result.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<T>, NetnsError> {
        let file = self.open()?;
        let name = self.0.name.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), NetnsError>>(1);
        let handle = thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let entered = enter(&name, &file);
                drop(file);
                let ok = entered.is_ok();
                // The receiver waits for exactly this message.
                let _ = tx.send(entered);
                // Never run `f` in the wrong namespace. The caller sees the error and joins
                // this thread, which consumes the panic.
                assert!(ok, "thread did not enter its namespace");
                f()
            })
            .map_err(|source| NetnsError::Thread {
                name: self.0.name.clone(),
                source,
            })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(NetnsError::Thread {
                name: self.0.name.clone(),
                source: io::Error::other("thread exited before entering the namespace"),
            }),
        }
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward` or
    /// `net/ipv4/ip_forward` spelling).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        self.sysctls(&[(key, value)])
    }

    /// Sets several sysctls inside the namespace, in order.
    pub fn sysctls(&self, pairs: &[(&str, &str)]) -> Result<(), NetnsError> {
        let name = self.0.name.clone();
        self.run(|| {
            for (key, value) in pairs {
                fs::write(sysctl_path(key), value).map_err(|source| NetnsError::Sysctl {
                    name: name.clone(),
                    key: key.to_string(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String, NetnsError> {
        let name = self.0.name.clone();
        self.run(|| {
            fs::read_to_string(sysctl_path(key))
                .map(|s| s.trim().to_string())
                .map_err(|source| NetnsError::Sysctl {
                    name,
                    key: key.to_string(),
                    source,
                })
        })?
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec <name>
    /// <program>`); add arguments, environment and run it with [`crate::cmd::run`] or
    /// [`Netns::start`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(&self.0.name).arg(program);
        c
    }

    /// Runs `program args...` inside the namespace and captures its output; a nonzero exit is
    /// returned, not an error (check [`Output::success`]).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output, NetnsError> {
        let mut c = self.command(program);
        c.args(args);
        cmd::run(&mut c, None, cmd::DEFAULT_TIMEOUT).map_err(|source| self.cmd_err(source))
    }

    /// Like [`Netns::exec`], but a nonzero exit is an error carrying the output.
    pub fn exec_checked<S: AsRef<std::ffi::OsStr>>(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output, NetnsError> {
        let mut c = self.command(program);
        c.args(args);
        cmd::run_checked(&mut c, None, cmd::DEFAULT_TIMEOUT).map_err(|source| self.cmd_err(source))
    }

    fn cmd_err(&self, source: CmdError) -> NetnsError {
        NetnsError::Command {
            name: self.0.name.clone(),
            source,
        }
    }

    /// `ip -n <name> args...`, failing on a nonzero exit.
    pub fn ip(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.0.name).args(args);
        cmd::run_checked(&mut c, None, cmd::DEFAULT_TIMEOUT).map_err(|source| self.cmd_err(source))
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`) in one process:
    /// `ip -n <name> -batch -`.
    pub fn ip_batch(&self, lines: &[String]) -> Result<Output, NetnsError> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.0.name).args(["-batch", "-"]);
        let script = lines.join("\n") + "\n";
        cmd::run_checked(&mut c, Some(script.as_bytes()), cmd::DEFAULT_TIMEOUT)
            .map_err(|source| self.cmd_err(source))
    }

    /// `nft args...` inside the namespace, failing on a nonzero exit.
    pub fn nft(&self, args: &[&str]) -> Result<Output, NetnsError> {
        self.exec_checked("nft", args)
    }

    /// Loads a ruleset text atomically (`nft -f -`) inside the namespace.
    pub fn nft_apply(&self, ruleset: &str) -> Result<Output, NetnsError> {
        let mut c = self.command("nft");
        c.args(["-f", "-"]);
        cmd::run_checked(&mut c, Some(ruleset.as_bytes()), cmd::DEFAULT_TIMEOUT)
            .map_err(|source| self.cmd_err(source))
    }

    /// `nft list ruleset` of the namespace.
    pub fn ruleset(&self) -> Result<String, NetnsError> {
        Ok(self.nft(&["list", "ruleset"])?.stdout)
    }

    /// Starts a long-running program inside the namespace (e.g. the node agent); it is stopped
    /// when the namespace is deleted, or earlier with [`Process::stop`]. Build `command` with
    /// [`Netns::command`].
    pub fn start(&self, label: &str, command: Command) -> Result<Arc<Process>, NetnsError> {
        let process =
            Arc::new(
                Process::start(label, command).map_err(|source| NetnsError::Io {
                    name: self.0.name.clone(),
                    what: format!("starting {label}"),
                    source,
                })?,
            );
        self.0
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process.clone());
        Ok(process)
    }

    /// Starts a server on `port` (TCP: accept and echo one line; UDP: echo every datagram) on
    /// all addresses of the namespace, IPv4 and IPv6. It records what it received and runs
    /// until the namespace is deleted or [`Server::stop`].
    pub fn serve(&self, proto: Proto, port: u16) -> Result<Arc<Server>, NetnsError> {
        let server = Server::start(self, proto, port)?;
        self.0
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(server.clone());
        Ok(server)
    }

    /// The servers started with [`Netns::serve`] that are still registered.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.0
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server on `proto`/`port`, if one was started with [`Netns::serve`].
    pub fn server(&self, proto: Proto, port: u16) -> Option<Arc<Server>> {
        self.servers()
            .into_iter()
            .find(|s| s.proto() == proto && s.port() == port)
    }

    /// Asks every server started here to stop, without waiting (teardown of many namespaces
    /// signals all first, then deletes one by one).
    pub(crate) fn signal_stop_servers(&self) {
        for server in self
            .0
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            server.signal_stop();
        }
    }

    /// Stops servers and processes started here, then deletes the namespace. Idempotent.
    pub fn delete(&self) -> Result<(), NetnsError> {
        self.0.delete()
    }
}

impl Inner {
    fn delete(&self) -> Result<(), NetnsError> {
        if self.deleted.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let servers = std::mem::take(&mut *self.servers.lock().unwrap_or_else(|e| e.into_inner()));
        // Signal all first, then wait: each loop notices within one poll interval.
        for server in &servers {
            server.signal_stop();
        }
        for server in servers {
            server.stop();
        }
        let processes =
            std::mem::take(&mut *self.processes.lock().unwrap_or_else(|e| e.into_inner()));
        for process in processes {
            if let Err(e) = process.stop() {
                tracing::warn!(netns = %self.name, process = process.label(), error = %e, "cannot stop process");
            }
        }
        if !self.path.exists() {
            return Ok(());
        }
        cmd::run_checked(
            Command::new("ip").args(["netns", "delete", &self.name]),
            None,
            cmd::DEFAULT_TIMEOUT,
        )
        .map_err(|source| NetnsError::Command {
            name: self.name.clone(),
            source,
        })?;
        tracing::debug!(netns = %self.name, "deleted");
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete namespace");
        }
    }
}

fn enter(name: &str, file: &File) -> Result<(), NetnsError> {
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
        name: name.to_string(),
        source,
    })
}

fn sysctl_path(key: &str) -> PathBuf {
    if key.contains('/') {
        Path::new("/proc/sys").join(key.trim_start_matches('/'))
    } else {
        Path::new("/proc/sys").join(key.replace('.', "/"))
    }
}

/// How long [`Netns::delete`] gives a process to exit after SIGTERM.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_names_of_the_prefix() {
        assert_eq!(owner_pid("hx", "hx-123-4-n0"), Some(123));
        assert_eq!(owner_pid("hx", "hx-123-4"), Some(123));
        assert_eq!(owner_pid("hx", "hx-m-123-4"), None);
        assert_eq!(owner_pid("hx-m", "hx-123-4"), None);
        assert_eq!(owner_pid("hx", "hxy-123-4"), None);
    }

    #[test]
    fn prefixes_that_would_parse_ambiguously_are_rejected() {
        assert!(validate_prefix("harness-matrix").is_ok());
        assert!(validate_prefix("t1").is_ok());
        assert!(validate_prefix("a-1").is_err());
        assert!(validate_prefix("1a").is_err());
        assert!(validate_prefix("a--b").is_err());
        assert!(validate_prefix("A").is_err());
        assert!(validate_prefix("").is_err());
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not yet reaped: a zombie, as after `kill -9` of a test.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn unique_names_differ_and_carry_pid() {
        let a = unique_name("hx", "n0");
        let b = unique_name("hx", "n0");
        assert_ne!(a, b);
        assert_eq!(owner_pid("hx", &a), Some(std::process::id()));
    }
}
