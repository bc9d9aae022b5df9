//! Logging setup for the agent, in one place: `tracing` to stderr as text or JSON lines, with a
//! filter that can be changed while the agent runs (`PUT /loglevel`), so an operator can turn
//! on debug logs on one node without a restart.

use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot change the log filter: {0}")]
    Reload(#[source] reload::Error),
    #[error("cannot install the logger: {0}")]
    Init(#[source] tracing_subscriber::util::TryInitError),
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

impl LogControl {
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets a new filter (`info`, `debug`, `warn,nftpol=debug`, ...).
    pub fn set(&self, filter: &str) -> Result<(), TelemetryError> {
        let f = parse(filter)?;
        self.handle.reload(f).map_err(TelemetryError::Reload)?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = filter.to_string();
        Ok(())
    }
}

fn parse(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|source| TelemetryError::Filter {
        filter: filter.to_string(),
        source,
    })
}

/// Installs the global logger.
pub fn init(filter: &str, format: LogFormat) -> Result<LogControl, TelemetryError> {
    let (layer, handle) = reload::Layer::new(parse(filter)?);
    let registry = tracing_subscriber::registry().with(layer);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    }
    .map_err(TelemetryError::Init)?;
    Ok(LogControl {
        handle,
        current: Arc::new(Mutex::new(filter.to_string())),
    })
}
