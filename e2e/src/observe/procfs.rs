//! Resident memory of a process as the kernel accounts it (`/proc/<pid>/status`), which is
//! what a container's memory limit and an operator's `top` see.

use std::io;

/// Memory figures of one process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now.
    pub rss: u64,
    /// Peak resident set size ("high water mark") since the process started.
    pub hwm: u64,
    /// Resident anonymous memory (heap, stacks): what the program allocated.
    pub rss_anon: u64,
    /// Resident file-backed memory (the mapped binary and libraries).
    pub rss_file: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub fn of(pid: u32) -> io::Result<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        parse_status(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no VmRSS/VmHWM (a kernel thread or a zombie?)"),
            )
        })
    }
}

/// Mebibytes, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let rest = line.get(name.len()..)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") => Some(value * 1024),
            None => Some(value),
            Some(_) => None,
        }
    };
    Some(Memory {
        rss: field("VmRSS")?,
        hwm: field("VmHWM")?,
        rss_anon: field("RssAnon").unwrap_or(0),
        rss_file: field("RssFile").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let text = "Name:\tnftpol\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n\
                    RssAnon:\t   92160 kB\nRssFile:\t   10240 kB\nThreads:\t6\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss: 100 << 20,
                hwm: 200 << 20,
                rss_anon: 90 << 20,
                rss_file: 10 << 20
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        let m = Memory::of(std::process::id()).unwrap();
        assert!(m.rss > 0 && m.hwm >= m.rss, "{m:?}");
    }
}
