//! Where the plugin's `tracing` events go: stderr or `logFile`, never stdout (stdout carries
//! only the CNI result or error object).
//!
//! A minimal `tracing` subscriber of our own instead of `tracing-subscriber`: the plugin lives
//! for milliseconds, emits a handful of events and uses no spans worth recording, and the
//! static binary should stay small. Installed per invocation with
//! `tracing::subscriber::with_default`, so it also works inside the main `nftpol` binary
//! whatever global subscriber that one has.
//!
//! Line format: `2025-01-31T12:00:00.123Z WARN nftpol-cni ADD container=0123456789ab: message key=value`.

use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The subscriber: a level filter, a per-invocation prefix and a sink.
pub struct Logger {
    max: Level,
    prefix: String,
    sink: Mutex<Box<dyn Write + Send>>,
    next_span: AtomicU64,
}

impl Logger {
    /// Logs to `file` (appending) if given and openable, else to stderr. A file that cannot
    /// be opened is reported once on stderr.
    pub fn new(
        max: Level,
        file: Option<&Path>,
        command: &str,
        container_id: Option<&str>,
    ) -> Logger {
        let mut prefix = format!("nftpol-cni {command}");
        if let Some(id) = container_id {
            let short: String = id.chars().take(12).collect();
            let _ = write!(prefix, " container={short}");
        }
        let sink: Box<dyn Write + Send> = match file {
            None => Box::new(io::stderr()),
            Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    let _ = writeln!(
                        io::stderr(),
                        "{} WARN {prefix}: cannot open logFile {}: {e}; logging to stderr",
                        timestamp(SystemTime::now()),
                        path.display()
                    );
                    Box::new(io::stderr())
                }
            },
        };
        Logger::with_sink(max, prefix, sink)
    }

    /// A logger writing to any sink (tests).
    pub fn with_sink(max: Level, prefix: String, sink: Box<dyn Write + Send>) -> Logger {
        Logger {
            max,
            prefix,
            sink: Mutex::new(sink),
            next_span: AtomicU64::new(1),
        }
    }
}

impl Subscriber for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // In tracing, more verbose levels compare greater.
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format!(
            "{} {} {}: {}{}\n",
            timestamp(SystemTime::now()),
            event.metadata().level(),
            self.prefix,
            fields.message,
            fields.rest
        );
        if let Ok(mut sink) = self.sink.lock() {
            // Logging must never fail the invocation.
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

/// RFC 3339 UTC with milliseconds, from the system clock (no time crate).
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), by 400-year eras.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year, from March 1st
    let mp = (5 * doy + 2) / 153; // month, March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = era * 400 + yoe + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // 2024-02-29 12:34:56.789
        assert_eq!(timestamp(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800); // 2000-03-01
        assert_eq!(timestamp(t), "2000-03-01T00:00:00.000Z");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_below_the_level_are_dropped_and_fields_printed() {
        let buf = Buf::default();
        let logger = Logger::with_sink(Level::INFO, "nftpol-cni ADD".into(), Box::new(buf.clone()));
        tracing::subscriber::with_default(logger, || {
            tracing::debug!("hidden");
            tracing::info!(pod = "prod/web-0", ms = 3, "pod admitted");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.ends_with(" INFO nftpol-cni ADD: pod admitted pod=\"prod/web-0\" ms=3\n"),
            "{out}"
        );
    }
}
