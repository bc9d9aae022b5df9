//! Histograms read from a Prometheus (or OpenMetrics) text exposition, as a dashboard would
//! compute them: difference of two scrapes, then quantiles estimated from the buckets.

/// One histogram: cumulative bucket counts by upper bound (ascending, `+Inf` last), sum and
/// count. Several label sets can be added up into one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The histogram `name` summed over every label set for which `filter` holds (`filter`
    /// sees the labels without `le`). `None` if no series matched.
    pub fn parse(
        text: &str,
        name: &str,
        filter: impl Fn(&[(String, String)]) -> bool,
    ) -> Option<Histogram> {
        let mut h = Histogram::default();
        let mut found = false;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((metric, labels, value)) = split_sample(line) else {
                continue;
            };
            let Some(suffix) = metric.strip_prefix(name) else {
                continue;
            };
            let mut le = None;
            let rest: Vec<(String, String)> = labels
                .into_iter()
                .filter_map(|(k, v)| {
                    if k == "le" {
                        le = Some(v);
                        None
                    } else {
                        Some((k, v))
                    }
                })
                .collect();
            if !filter(&rest) {
                continue;
            }
            match suffix {
                "_bucket" => {
                    let Some(bound) = le.as_deref().and_then(parse_float) else {
                        continue;
                    };
                    found = true;
                    match h.buckets.iter_mut().find(|(b, _)| *b == bound) {
                        Some((_, c)) => *c += value,
                        None => h.buckets.push((bound, value)),
                    }
                }
                "_sum" => {
                    found = true;
                    h.sum += value;
                }
                "_count" => {
                    found = true;
                    h.count += value;
                }
                _ => {}
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        found.then_some(h)
    }

    /// What was observed between an earlier scrape and this one.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(b, c)| (*b, c - before(*b)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Mean of the observations (NaN when there are none).
    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does (the lower edge of the first bucket is 0). Observations
    /// above the last finite bound yield that bound. NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |(_, c)| *c);
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(bound, cum) in &self.buckets {
            if cum >= rank {
                if bound.is_infinite() {
                    return lower.0;
                }
                let inside = cum - lower.1;
                if inside <= 0.0 {
                    return bound;
                }
                return lower.0 + (bound - lower.0) * (rank - lower.1) / inside;
            }
            lower = (bound, cum);
        }
        lower.0
    }

    /// The upper bound of the bucket holding the `q` quantile: a value no observation of
    /// that rank exceeds.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let total = self.buckets.last().map_or(0.0, |(_, c)| *c);
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        self.buckets
            .iter()
            .find(|(_, cum)| *cum >= rank)
            .map_or(f64::INFINITY, |(b, _)| *b)
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Label pairs of a sample, in order.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value [timestamp]` -> (name, labels, value).
fn split_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = parse_float(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_labels(mut s: &str) -> Option<Labels> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let (key, rest) = s.split_once('=')?;
        let rest = rest.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key.trim().to_string(), value));
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP lat_seconds Latency.
# TYPE lat_seconds histogram
lat_seconds_sum{kind="pod"} 0.5
lat_seconds_count{kind="pod"} 10
lat_seconds_bucket{le="0.01",kind="pod"} 2
lat_seconds_bucket{le="0.02",kind="pod"} 8
lat_seconds_bucket{le="+Inf",kind="pod"} 10
lat_seconds_sum{kind="networkpolicy"} 0.1
lat_seconds_count{kind="networkpolicy"} 2
lat_seconds_bucket{le="0.01",kind="networkpolicy"} 0
lat_seconds_bucket{le="0.02",kind="networkpolicy"} 2
lat_seconds_bucket{le="+Inf",kind="networkpolicy"} 2
other_total 3
# EOF
"#;

    #[test]
    fn series_are_summed_over_matching_label_sets() {
        let all = Histogram::parse(SCRAPE, "lat_seconds", |_| true).unwrap();
        assert_eq!(all.count, 12.0);
        assert_eq!(
            all.buckets,
            vec![(0.01, 2.0), (0.02, 10.0), (f64::INFINITY, 12.0)]
        );
        let pods = Histogram::parse(SCRAPE, "lat_seconds", |l| {
            l.iter().any(|(k, v)| k == "kind" && v == "pod")
        })
        .unwrap();
        assert_eq!(pods.count, 10.0);
        assert!((pods.mean() - 0.05).abs() < 1e-12);
        assert!(Histogram::parse(SCRAPE, "missing_seconds", |_| true).is_none());
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_like_histogram_quantile() {
        let h = Histogram {
            buckets: vec![(0.01, 2.0), (0.02, 10.0), (f64::INFINITY, 10.0)],
            sum: 0.0,
            count: 10.0,
        };
        // rank 5 lies 3/8 of the way into the (0.01, 0.02] bucket.
        assert!((h.quantile(0.5) - 0.01375).abs() < 1e-12);
        assert!((h.quantile(0.1) - 0.005).abs() < 1e-12);
        assert_eq!(h.quantile_bound(0.5), 0.02);
        let over = Histogram {
            buckets: vec![(0.01, 1.0), (f64::INFINITY, 4.0)],
            sum: 0.0,
            count: 4.0,
        };
        assert_eq!(over.quantile(0.99), 0.01);
        assert!(Histogram::default().quantile(0.5).is_nan());
    }

    #[test]
    fn differences_of_scrapes_keep_only_new_observations() {
        let before = Histogram {
            buckets: vec![(0.01, 2.0), (f64::INFINITY, 3.0)],
            sum: 0.03,
            count: 3.0,
        };
        let after = Histogram {
            buckets: vec![(0.01, 5.0), (f64::INFINITY, 7.0)],
            sum: 0.07,
            count: 7.0,
        };
        let d = after.since(&before);
        assert_eq!(d.buckets, vec![(0.01, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(d.count, 4.0);
        assert!((d.sum - 0.04).abs() < 1e-12);
    }

    #[test]
    fn escaped_label_values_are_unescaped() {
        let (name, labels, value) = split_sample(r#"m{a="x\"y",b="z"} 1.5"#).unwrap();
        assert_eq!(name, "m");
        assert_eq!(
            labels,
            vec![("a".into(), "x\"y".into()), ("b".into(), "z".into())]
        );
        assert_eq!(value, 1.5);
    }
}
