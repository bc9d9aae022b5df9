//! Connectivity matrices: every source against every destination, all probes at once.
//!
//! Policy tests are about "who can reach whom". A [`Matrix`] runs one probe per (case, source,
//! destination) concurrently, each on its own thread inside the source's namespace, so a 9x9
//! matrix with 1 s timeouts takes about one timeout however many cells are blocked. On a
//! mismatch with the expectation it prints expected and actual grids side by side, the
//! differing cells marked, and a line per difference with the probe's error.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::{Family, Pod};
use crate::netns::Netns;
use crate::traffic::{Endpoint, Outcome, Probe, ProbeResult, Proto};

/// Most probes in flight at once (threads).
const MAX_IN_FLIGHT: usize = 512;

/// Sources x destinations x cases, to be run; see the module docs.
#[derive(Debug, Clone)]
pub struct Matrix {
    timeout: Duration,
    rows: Vec<(String, Netns)>,
    cols: Vec<(String, IpAddr)>,
    cases: Vec<(Proto, u16)>,
}

/// One cell, as the expectation function sees it.
#[derive(Debug, Clone, Copy)]
pub struct Cell<'a> {
    /// Row label of the source (`ns/pod`, `node-0`).
    pub from: &'a str,
    /// Column label of the destination.
    pub to: &'a str,
    pub to_ip: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub row: usize,
    pub col: usize,
}

impl Matrix {
    /// An empty matrix whose probes time out after `timeout`.
    pub fn new(timeout: Duration) -> Matrix {
        Matrix {
            timeout,
            rows: Vec::new(),
            cols: Vec::new(),
            cases: Vec::new(),
        }
    }

    /// Adds a source row.
    pub fn row(mut self, from: &(impl Endpoint + ?Sized)) -> Matrix {
        self.rows.push((from.label(), from.netns().clone()));
        self
    }

    /// Adds source rows.
    pub fn rows<'a, E: Endpoint + 'a>(mut self, from: impl IntoIterator<Item = &'a E>) -> Matrix {
        for e in from {
            self = self.row(e);
        }
        self
    }

    /// Adds a destination column.
    pub fn col(mut self, label: impl Into<String>, ip: IpAddr) -> Matrix {
        self.cols.push((label.into(), ip));
        self
    }

    /// Adds a column per pod, at its address of `family` (pods without one are skipped);
    /// labelled `ns/name`.
    pub fn pod_cols<'a>(
        mut self,
        pods: impl IntoIterator<Item = &'a Pod>,
        family: Family,
    ) -> Matrix {
        for pod in pods {
            if let Some(ip) = pod.ip(family) {
                self = self.col(pod.key(), ip);
            }
        }
        self
    }

    /// Adds a case: every cell is probed with `proto` on `port`.
    pub fn case(mut self, proto: Proto, port: u16) -> Matrix {
        self.cases.push((proto, port));
        self
    }

    /// Runs every probe concurrently.
    pub fn run(&self) -> MatrixResult {
        let start = Instant::now();
        let mut cells: Vec<(usize, usize, usize)> = Vec::new();
        for c in 0..self.cases.len() {
            for r in 0..self.rows.len() {
                for k in 0..self.cols.len() {
                    cells.push((c, r, k));
                }
            }
        }
        let handles: Vec<_> = self.rows.iter().map(|(_, ns)| ns.open_handle()).collect();
        let mut results: Vec<ProbeResult> = Vec::with_capacity(cells.len());
        for wave in cells.chunks(MAX_IN_FLIGHT) {
            let out: Vec<ProbeResult> = thread::scope(|s| {
                let spawned: Vec<_> = wave
                    .iter()
                    .map(|&(c, r, k)| {
                        let (proto, port) = self.cases[c];
                        let probe = Probe::new(proto, self.cols[k].1, port, self.timeout);
                        let netns = &self.rows[r].1;
                        let handle = &handles[r];
                        thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn_scoped(s, move || {
                                let entered = match handle {
                                    Ok(h) => netns.enter_with(h).map_err(|e| e.to_string()),
                                    Err(e) => Err(e.to_string()),
                                };
                                match entered {
                                    Ok(()) => probe.run_here(),
                                    Err(e) => not_run(e),
                                }
                            })
                    })
                    .collect();
                spawned
                    .into_iter()
                    .map(|h| match h {
                        Ok(h) => h
                            .join()
                            .unwrap_or_else(|_| not_run("probe thread panicked".into())),
                        Err(e) => not_run(format!("cannot start probe thread: {e}")),
                    })
                    .collect()
            });
            results.extend(out);
        }
        MatrixResult {
            rows: self.rows.iter().map(|(l, _)| l.clone()).collect(),
            cols: self.cols.clone(),
            cases: self.cases.clone(),
            results,
            elapsed: start.elapsed(),
        }
    }
}

fn not_run(detail: String) -> ProbeResult {
    ProbeResult {
        outcome: Outcome::Blocked,
        detail: Some(format!("probe not run: {detail}")),
        elapsed: Duration::ZERO,
    }
}

/// The outcome of every cell of a [`Matrix`].
#[derive(Debug, Clone)]
pub struct MatrixResult {
    rows: Vec<String>,
    cols: Vec<(String, IpAddr)>,
    cases: Vec<(Proto, u16)>,
    /// Indexed `[case][row][col]`, flattened.
    results: Vec<ProbeResult>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl MatrixResult {
    fn index(&self, case: usize, row: usize, col: usize) -> usize {
        (case * self.rows.len() + row) * self.cols.len() + col
    }

    /// The result of one cell (indices in the order rows, columns and cases were added).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn get(&self, case: usize, row: usize, col: usize) -> &ProbeResult {
        &self.results[self.index(case, row, col)]
    }

    /// The outcome of the cell with these labels and case, if there is one.
    pub fn outcome(&self, from: &str, to: &str, proto: Proto, port: u16) -> Option<Outcome> {
        let c = self.cases.iter().position(|x| *x == (proto, port))?;
        let r = self.rows.iter().position(|x| x == from)?;
        let k = self.cols.iter().position(|(x, _)| x == to)?;
        Some(self.get(c, r, k).outcome)
    }

    /// Every cell with its result.
    pub fn cells(&self) -> impl Iterator<Item = (Cell<'_>, &ProbeResult)> {
        (0..self.cases.len()).flat_map(move |c| {
            (0..self.rows.len()).flat_map(move |r| {
                (0..self.cols.len()).map(move |k| (self.cell(c, r, k), self.get(c, r, k)))
            })
        })
    }

    fn cell(&self, c: usize, r: usize, k: usize) -> Cell<'_> {
        Cell {
            from: &self.rows[r],
            to: &self.cols[k].0,
            to_ip: self.cols[k].1,
            proto: self.cases[c].0,
            port: self.cases[c].1,
            row: r,
            col: k,
        }
    }

    /// Compares with `expected`; on a mismatch, the error is a readable report (grids of
    /// expected and actual, one line per differing cell).
    pub fn check(&self, expected: impl Fn(&Cell) -> Outcome) -> Result<(), String> {
        let want: Vec<Outcome> = self.cells().map(|(cell, _)| expected(&cell)).collect();
        let differing = self
            .results
            .iter()
            .zip(&want)
            .filter(|(got, want)| got.outcome != **want)
            .count();
        if differing == 0 {
            return Ok(());
        }
        Err(self.report(Some(&want), differing))
    }

    /// Panics with the report of [`MatrixResult::check`] on a mismatch.
    #[track_caller]
    pub fn assert(&self, expected: impl Fn(&Cell) -> Outcome) {
        if let Err(report) = self.check(expected) {
            panic!("{report}");
        }
    }

    /// The actual grid alone.
    pub fn grid(&self) -> String {
        self.report(None, 0)
    }

    fn report(&self, want: Option<&[Outcome]>, differing: usize) -> String {
        let mut s = String::new();
        if want.is_some() {
            let _ = writeln!(
                s,
                "connectivity matrix mismatch: {differing} of {} cells differ (ran in {:?})",
                self.results.len(),
                self.elapsed
            );
        }
        let _ = writeln!(
            s,
            "legend: {} connected, {} blocked, {} refused, {} unreachable",
            Outcome::Connected.symbol(),
            Outcome::Blocked.symbol(),
            Outcome::Refused.symbol(),
            Outcome::Unreachable.symbol()
        );
        let _ = writeln!(s, "columns:");
        for (k, (label, ip)) in self.cols.iter().enumerate() {
            let _ = writeln!(s, "  {k:>2} = {label} {ip}");
        }
        let label_w = self
            .rows
            .iter()
            .map(|r| r.chars().count())
            .max()
            .unwrap_or(0)
            .max(12);
        let cell_w = self.cols.len().saturating_sub(1).to_string().len();
        let header: String = (0..self.cols.len())
            .map(|k| format!("{k:>cell_w$}"))
            .collect::<Vec<_>>()
            .join(" ");
        let grid_w = header.chars().count();
        for (c, (proto, port)) in self.cases.iter().enumerate() {
            let title = format!("{proto}/{port}");
            if want.is_some() {
                let _ = writeln!(
                    s,
                    "\n{title:<label_w$}  {:<grid_w$}   {:<grid_w$}",
                    "expected", "actual"
                );
                let _ = writeln!(s, "{:<label_w$}  {header}   {header}", "");
            } else {
                let _ = writeln!(s, "\n{title:<label_w$}  {header}");
            }
            for (r, row) in self.rows.iter().enumerate() {
                let actual: Vec<Outcome> = (0..self.cols.len())
                    .map(|k| self.get(c, r, k).outcome)
                    .collect();
                let line = |o: &[Outcome]| {
                    o.iter()
                        .map(|x| format!("{:>cell_w$}", x.symbol()))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                match want {
                    Some(want) => {
                        let expected: Vec<Outcome> = (0..self.cols.len())
                            .map(|k| want[self.index(c, r, k)])
                            .collect();
                        let bad = expected.iter().zip(&actual).filter(|(a, b)| a != b).count();
                        let mark = if bad > 0 {
                            format!("   <- {bad} differ")
                        } else {
                            String::new()
                        };
                        let _ = writeln!(
                            s,
                            "{row:<label_w$}  {}   {}{mark}",
                            line(&expected),
                            line(&actual)
                        );
                    }
                    None => {
                        let _ = writeln!(s, "{row:<label_w$}  {}", line(&actual));
                    }
                }
            }
        }
        if let Some(want) = want {
            let _ = writeln!(s, "\ndiffering cells:");
            for ((cell, got), want) in self.cells().zip(want) {
                if got.outcome != *want {
                    let _ = writeln!(
                        s,
                        "  {} -> {} ({}) {}/{}: expected {:?}, got {:?} after {:?}{}",
                        cell.from,
                        cell.to,
                        cell.to_ip,
                        cell.proto,
                        cell.port,
                        want,
                        got.outcome,
                        got.elapsed,
                        got.detail
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        s
    }
}
