//! Connectivity matrices: every source against every destination, all probes at once.
//!
//! Policy tests are about "who can reach whom". A [`Matrix`] runs one probe per (case, source,
//! destination) concurrently, each on its own thread inside the source's namespace, so a 9x9
//! matrix with 1 s timeouts takes about one timeout however many cells are blocked. On a
//! mismatch with the expectation it prints expected and actual grids side by side, the
//! differing cells marked, and a line per difference with the probe's error.
//!
//! A [`TargetMatrix`] has one destination address, port and protocol per column instead (a
//! pod's named port, a Service, an external server): the shape of a policy walkthrough.
//! [`run_probes`] runs any list of probes the same way.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
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
        let mut probes: Vec<(usize, Probe)> = Vec::new();
        for &(proto, port) in &self.cases {
            for r in 0..self.rows.len() {
                for (_, ip) in &self.cols {
                    probes.push((r, Probe::new(proto, *ip, port, self.timeout)));
                }
            }
        }
        let sources: Vec<&Netns> = self.rows.iter().map(|(_, ns)| ns).collect();
        let results = run_probes(&sources, &probes);
        MatrixResult {
            rows: self.rows.iter().map(|(l, _)| l.clone()).collect(),
            cols: self.cols.clone(),
            cases: self.cases.clone(),
            results,
            elapsed: start.elapsed(),
        }
    }
}

/// Runs every probe concurrently, each on a thread of its own inside the namespace
/// `sources[i]` of its `(i, probe)` (each namespace is opened once), at most
/// [`MAX_IN_FLIGHT`] at a time. Results in the order of `probes`; a probe that could not run
/// (no such source, namespace gone, no thread) counts as blocked, with the reason as detail.
pub fn run_probes(sources: &[&Netns], probes: &[(usize, Probe)]) -> Vec<ProbeResult> {
    let handles: Vec<_> = sources.iter().map(|ns| ns.open_handle()).collect();
    let mut results: Vec<ProbeResult> = Vec::with_capacity(probes.len());
    for wave in probes.chunks(MAX_IN_FLIGHT) {
        let out: Vec<ProbeResult> = thread::scope(|s| {
            let spawned: Vec<_> = wave
                .iter()
                .map(|(r, probe)| {
                    let source = sources.get(*r).zip(handles.get(*r));
                    thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn_scoped(s, move || {
                            let entered = match source {
                                Some((netns, Ok(h))) => {
                                    netns.enter_with(h).map_err(|e| e.to_string())
                                }
                                Some((_, Err(e))) => Err(e.to_string()),
                                None => Err(format!("no source namespace #{r}")),
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
    results
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

/// Sources x targets: every column is one destination (address, port and protocol), probed
/// once from every row, all probes at once. Where a [`Matrix`] crosses every column with every
/// case, this has the shape of a policy walkthrough: "who reaches Service web:80, the database
/// on TCP 5432, the DNS on UDP 53". Printed with [`TargetMatrixResult::grid`], or with the
/// cells that changed since an earlier run marked ([`TargetMatrixResult::grid_since`]).
#[derive(Debug, Clone)]
pub struct TargetMatrix {
    timeout: Duration,
    rows: Vec<(String, Netns)>,
    cols: Vec<Target>,
}

/// A column of a [`TargetMatrix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub label: String,
    pub proto: Proto,
    pub to: SocketAddr,
}

impl TargetMatrix {
    /// An empty matrix whose probes time out after `timeout`.
    pub fn new(timeout: Duration) -> TargetMatrix {
        TargetMatrix {
            timeout,
            rows: Vec::new(),
            cols: Vec::new(),
        }
    }

    /// Adds a source row.
    pub fn row(mut self, from: &(impl Endpoint + ?Sized)) -> TargetMatrix {
        self.rows.push((from.label(), from.netns().clone()));
        self
    }

    /// Adds source rows.
    pub fn rows<'a, E: Endpoint + 'a>(
        mut self,
        from: impl IntoIterator<Item = &'a E>,
    ) -> TargetMatrix {
        for e in from {
            self = self.row(e);
        }
        self
    }

    /// Adds a column: `proto` to `to`, named `label` in the grid.
    pub fn target(
        mut self,
        label: impl Into<String>,
        proto: Proto,
        to: SocketAddr,
    ) -> TargetMatrix {
        self.cols.push(Target {
            label: label.into(),
            proto,
            to,
        });
        self
    }

    /// Runs every probe concurrently.
    pub fn run(&self) -> TargetMatrixResult {
        let start = Instant::now();
        let probes: Vec<(usize, Probe)> = (0..self.rows.len())
            .flat_map(|r| {
                self.cols
                    .iter()
                    .map(move |t| (r, Probe::new(t.proto, t.to.ip(), t.to.port(), self.timeout)))
            })
            .collect();
        let sources: Vec<&Netns> = self.rows.iter().map(|(_, ns)| ns).collect();
        TargetMatrixResult {
            rows: self.rows.iter().map(|(l, _)| l.clone()).collect(),
            cols: self.cols.clone(),
            results: run_probes(&sources, &probes),
            elapsed: start.elapsed(),
        }
    }
}

/// The outcome of every cell of a [`TargetMatrix`].
#[derive(Debug, Clone)]
pub struct TargetMatrixResult {
    rows: Vec<String>,
    cols: Vec<Target>,
    /// Indexed `[row][col]`, flattened.
    results: Vec<ProbeResult>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl TargetMatrixResult {
    /// Row labels, in order.
    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    /// Columns, in order.
    pub fn cols(&self) -> &[Target] {
        &self.cols
    }

    /// The result of one cell, if the indices are in range.
    pub fn get(&self, row: usize, col: usize) -> Option<&ProbeResult> {
        if col >= self.cols.len() {
            return None;
        }
        self.results.get(row * self.cols.len() + col)
    }

    /// The outcome of the cell from row `from` to the column labelled `to`.
    pub fn outcome(&self, from: &str, to: &str) -> Option<Outcome> {
        let r = self.rows.iter().position(|x| x == from)?;
        let k = self.cols.iter().position(|t| t.label == to)?;
        self.get(r, k).map(|p| p.outcome)
    }

    /// The grid: a legend, the numbered columns, a line per row.
    pub fn grid(&self) -> String {
        self.render(None)
    }

    /// The grid, each row followed by the columns whose outcome differs from the same cell of
    /// `before` (a run of the same rows and columns, e.g. before a policy was applied).
    pub fn grid_since(&self, before: &TargetMatrixResult) -> String {
        self.render(Some(before))
    }

    fn render(&self, before: Option<&TargetMatrixResult>) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  {} connected   {} blocked (no answer: dropped)   {} refused   {} unreachable",
            Outcome::Connected.symbol(),
            Outcome::Blocked.symbol(),
            Outcome::Refused.symbol(),
            Outcome::Unreachable.symbol()
        );
        let num_w = self.cols.len().saturating_sub(1).to_string().len();
        let col_w = self
            .cols
            .iter()
            .map(|t| t.label.chars().count())
            .max()
            .unwrap_or(0);
        for (k, t) in self.cols.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {k:>num_w$}  {:<col_w$}  {} {}",
                t.label, t.proto, t.to
            );
        }
        let row_w = self
            .rows
            .iter()
            .map(|r| r.chars().count())
            .max()
            .unwrap_or(0);
        let header = (0..self.cols.len())
            .map(|k| format!("{k:>num_w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(s, "  {:row_w$}    {header}", "");
        for (r, row) in self.rows.iter().enumerate() {
            let outcome = |m: &TargetMatrixResult, k| m.get(r, k).map(|p| p.outcome);
            let cells = (0..self.cols.len())
                .map(|k| {
                    let symbol = outcome(self, k).map_or('?', Outcome::symbol);
                    format!("{symbol:>num_w$}")
                })
                .collect::<Vec<_>>()
                .join("  ");
            let changed: Vec<String> = match before {
                Some(b) => (0..self.cols.len())
                    .filter(|&k| outcome(self, k) != outcome(b, k))
                    .map(|k| k.to_string())
                    .collect(),
                None => Vec::new(),
            };
            let mark = if changed.is_empty() {
                String::new()
            } else {
                format!("    <- changed: {}", changed.join(", "))
            };
            let _ = writeln!(s, "  {row:<row_w$}    {cells}{mark}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcomes: &[Outcome]) -> TargetMatrixResult {
        let target = |label: &str, port| Target {
            label: label.into(),
            proto: Proto::Tcp,
            to: SocketAddr::from(([10, 244, 0, 2], port)),
        };
        TargetMatrixResult {
            rows: vec!["ns/client".into(), "ns/other-client".into()],
            cols: vec![target("web", 8080), target("web, another port", 9999)],
            results: outcomes
                .iter()
                .map(|&outcome| ProbeResult {
                    outcome,
                    detail: None,
                    elapsed: Duration::ZERO,
                })
                .collect(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_target_grid_numbers_columns_and_marks_what_changed() {
        use Outcome::{Blocked, Connected, Refused};
        let before = result(&[Connected, Connected, Connected, Connected]);
        let after = result(&[Connected, Blocked, Blocked, Refused]);
        assert_eq!(
            after.outcome("ns/client", "web, another port"),
            Some(Blocked)
        );
        assert_eq!(after.outcome("ns/client", "nowhere"), None);
        assert!(after.get(0, 2).is_none());
        let grid = after.grid_since(&before);
        let lines: Vec<&str> = grid.lines().collect();
        assert!(lines[0].contains("+ connected"), "{grid}");
        assert_eq!(lines[1], "  0  web                tcp 10.244.0.2:8080");
        assert_eq!(lines[2], "  1  web, another port  tcp 10.244.0.2:9999");
        assert_eq!(lines[3].trim(), "0  1");
        assert_eq!(lines[4], "  ns/client          +  -    <- changed: 1");
        assert_eq!(lines[5], "  ns/other-client    -  R    <- changed: 0, 1");
        assert!(!after.grid().contains("changed"), "{}", after.grid());
    }
}
