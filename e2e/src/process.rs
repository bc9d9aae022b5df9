//! Long-running programs inside a namespace (a node agent, a demo server), stopped for sure.
//!
//! A [`Process`] writes its stdout and stderr to files so that a test can read them while it
//! runs and they are printed when the test panics: the agent's log is the first thing one
//! needs when an end-to-end test fails.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cmd;
use crate::netns::STOP_GRACE;

/// A program started with [`crate::Netns::start`].
pub struct Process {
    label: String,
    command: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("label", &self.label)
            .field("pid", &self.pid)
            .finish()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Process {
    pub(crate) fn start(label: &str, mut command: Command) -> io::Result<Process> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!(
            "nftpol-e2e-{}-{seq}-{}",
            std::process::id(),
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let stdout_path = base.with_extension("stdout");
        let stderr_path = base.with_extension("stderr");
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        let description = cmd::describe(&command);
        let child = command.spawn()?;
        tracing::debug!(label, pid = child.id(), command = %description, "started");
        Ok(Process {
            label: label.to_string(),
            command: description,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
            stdout_path,
            stderr_path,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the program is still running (reaps it if it exited).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                *child = None;
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    /// How it exited, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.is_running();
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files its stdout and stderr go to (removed when the `Process` is dropped).
    pub fn output_paths(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.stdout_path, &self.stderr_path)
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after a grace period; returns the exit status. Idempotent.
    pub fn stop(&self) -> io::Result<Option<ExitStatus>> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut child) = guard.take() else {
            return Ok(*self.status.lock().unwrap_or_else(|e| e.into_inner()));
        };
        if child.try_wait()?.is_none() {
            // `ip netns exec` execs the program, so this pid is the program itself.
            let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
            if let Err(e) = signal::kill(pid, Signal::SIGTERM) {
                tracing::debug!(label = %self.label, error = %e, "SIGTERM failed");
            }
        }
        let status = match cmd::wait_deadline(&mut child, STOP_GRACE)? {
            Some(status) => status,
            None => {
                tracing::warn!(label = %self.label, "did not exit on SIGTERM; killing");
                child.kill()?;
                child.wait()?
            }
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        Ok(Some(status))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(label = %self.label, error = %e, "cannot stop process");
        }
        if std::thread::panicking() {
            // Test output, not a log: the program's own log is what explains the failure.
            eprintln!(
                "=== output of {} (`{}`) ===\n--- stdout\n{}\n--- stderr\n{}",
                self.label,
                self.command,
                self.stdout(),
                self.stderr()
            );
        }
        let _ = fs::remove_file(&self.stdout_path);
        let _ = fs::remove_file(&self.stderr_path);
    }
}
