//! Running external programs (`ip`, `nft`, CNI plugins, `nftpol`) with captured output and a
//! deadline.
//!
//! Every program the harness runs goes through [`run`], so a hung plugin or agent fails the
//! test with a clear error instead of hanging it, and every failure names the command line and
//! carries what the program printed.

use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Default deadline for one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished program printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}  ({})", self.command, self.status)?;
        if !self.stdout.is_empty() {
            writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.is_empty() {
            writeln!(f, "--- stderr\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// Errors from running a program.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("i/o with `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{command}` did not finish within {timeout:?} (killed); stdout: {stdout:?}; stderr: {stderr:?}"
    )]
    Timeout {
        command: String,
        timeout: Duration,
        stdout: String,
        stderr: String,
    },
    #[error("`{}` failed ({}): {}", .0.command, .0.status, failure_text(.0))]
    Failed(Box<Output>),
}

fn failure_text(out: &Output) -> String {
    let text = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    text.to_string()
}

/// The command line of `cmd` as a readable string (program and arguments, space separated).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            s.push('\'');
            s.push_str(&arg);
            s.push('\'');
        } else {
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` to completion with `stdin` fed to it, capturing stdout and stderr. A nonzero
/// exit is not an error here (see [`run_checked`]); exceeding `timeout` kills the program.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, CmdError> {
    let command = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
        command: command.clone(),
        source,
    })?;
    let io_err = |source| CmdError::Io {
        command: command.clone(),
        source,
    };

    // Feed stdin and drain both pipes on their own threads so that no pipe buffer can fill up
    // and deadlock the child against us.
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let status = match wait_deadline(&mut child, timeout).map_err(io_err)? {
        Some(status) => status,
        None => {
            // Killing a process that already exited is harmless; ignore that race.
            let _ = child.kill();
            let _ = child.wait();
            return Err(CmdError::Timeout {
                command,
                timeout,
                stdout: collect(stdout),
                stderr: collect(stderr),
            });
        }
    };
    if let Some(writer) = writer {
        // A program may exit without reading its input (EPIPE): that is its business, the
        // exit status and output tell the story.
        let _ = writer.join();
    }
    Ok(Output {
        command,
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Like [`run`], but a nonzero exit is [`CmdError::Failed`] with the output.
pub fn run_checked(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, CmdError> {
    let out = run(cmd, stdin, timeout)?;
    if out.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed(Box::new(out)))
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is still useful.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn collect(handle: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    handle
        .and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits for `child` until `timeout`; `None` when it is still running then.
pub(crate) fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    // Short pauses: the exit is seen within a millisecond, so timings of short programs (CNI
    // plugins take a few milliseconds) are not rounded up to the polling steps. A poll is one
    // waitpid(WNOHANG); a thousand a second cost nothing.
    let mut pause = Duration::from_micros(50);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}
