//! Liveness and readiness, shared between the engine (which reports), the HTTP server
//! (`/healthz`, `/readyz`) and the CNI server (STATUS, and holding ADDs until ready).
//!
//! - Live: the engine loop ticked within [`LIVENESS_TIMEOUT`]. The loop wakes at least once a
//!   second; only a sync longer than the timeout (or a hang) makes it stale.
//! - Ready: the first full sync from synced caches has been committed, the last sync did not
//!   fail (or started failing less than [`FAILURE_GRACE`] ago, so one transient error does
//!   not flap readiness), and some sync succeeded within `stale_after` (the periodic resync
//!   keeps this fresh on a quiet cluster).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::metrics::Metrics;

/// `/healthz` fails when the engine loop has not ticked for this long.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A failing sync keeps the agent ready for this long (the engine retries with backoff).
pub const FAILURE_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct State {
    heartbeat: Instant,
    initialized: bool,
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    stale_after: Duration,
    initialized_tx: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// `stale_after`: readiness requires a successful sync at least this recently.
    pub fn new(stale_after: Duration, metrics: Arc<Metrics>) -> Health {
        Health {
            state: Mutex::new(State {
                heartbeat: Instant::now(),
                initialized: false,
                last_ok: None,
                failing_since: None,
                last_error: None,
            }),
            stale_after,
            initialized_tx: watch::Sender::new(false),
            metrics,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine loop is alive.
    pub fn heartbeat(&self) {
        self.state().heartbeat = Instant::now();
        self.publish();
    }

    /// The first full sync has been committed.
    pub fn set_initialized(&self) {
        self.state().initialized = true;
        self.initialized_tx.send_replace(true);
        self.publish();
    }

    pub fn sync_ok(&self) {
        {
            let mut s = self.state();
            s.last_ok = Some(Instant::now());
            s.failing_since = None;
            s.last_error = None;
        }
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.last_successful_sync.set(unix);
        self.publish();
    }

    pub fn sync_failed(&self, error: &str) {
        {
            let mut s = self.state();
            s.failing_since.get_or_insert_with(Instant::now);
            s.last_error = Some(error.to_string());
        }
        self.publish();
    }

    /// Resolves when the first full sync has been committed.
    pub fn initialized(&self) -> watch::Receiver<bool> {
        self.initialized_tx.subscribe()
    }

    pub fn is_initialized(&self) -> bool {
        self.state().initialized
    }

    /// `Ok` when live; otherwise why not.
    pub fn live(&self) -> Result<(), String> {
        let age = self.state().heartbeat.elapsed();
        if age > LIVENESS_TIMEOUT {
            return Err(format!(
                "the engine loop has not ticked for {:.0} s",
                age.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// `Ok` when ready; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        let s = self.state();
        if !s.initialized {
            return Err("caches not synced or table not programmed yet".into());
        }
        if let Some(since) = s.failing_since
            && since.elapsed() > FAILURE_GRACE
        {
            return Err(format!(
                "syncs failing for {:.0} s: {}",
                since.elapsed().as_secs_f64(),
                s.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        match s.last_ok {
            Some(t) if t.elapsed() <= self.stale_after => Ok(()),
            Some(t) => Err(format!(
                "no successful sync for {:.0} s",
                t.elapsed().as_secs_f64()
            )),
            None => Err("no successful sync yet".into()),
        }
    }

    fn publish(&self) {
        self.metrics
            .ready
            .set(i64::from(self.ready().is_ok() && self.live().is_ok()));
    }
}
