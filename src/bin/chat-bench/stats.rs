//! Small statistics for the report: medians with their spread, percentiles, a line fit.

use serde_json::{json, Value};

/// The median of some runs, with the lowest and highest, as JSON and as text.
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// The spread of `runs` with the runs themselves, as JSON.
    pub fn summary(runs: &[f64]) -> Value {
        Spread::of(runs).json(runs)
    }

    pub fn json(&self, runs: &[f64]) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max, "runs": runs })
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn text(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// The machine's CPU time counters (`/proc/stat`), to report how much of a run the
/// hypervisor took away: on a shared VM, stolen time shows up directly as latency.
#[derive(Clone, Copy)]
pub struct CpuTimes {
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// Now, or zeros where `/proc/stat` is unavailable.
    pub fn now() -> CpuTimes {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(CpuTimes::parse))
            .unwrap_or(CpuTimes { steal: 0, total: 0 })
    }

    /// From the aggregate `cpu` line: user nice system idle iowait irq softirq steal ….
    fn parse(line: &str) -> CpuTimes {
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|t| t.parse().ok())
            .collect();
        CpuTimes {
            steal: ticks.get(7).copied().unwrap_or(0),
            total: ticks.iter().sum(),
        }
    }

    /// The percentage of CPU time stolen between `self` and now.
    pub fn steal_percent_since(&self) -> f64 {
        let now = CpuTimes::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * now.steal.saturating_sub(self.steal) as f64 / total as f64
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Least-squares line `y = slope * x + intercept`.
pub fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (points.first().map_or(0.0, |p| p.1 / p.0.max(1.0)), 0.0);
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = if sxx == 0.0 { 0.0 } else { sxy / sxx };
    (slope, mean_y - slope * mean_x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_percentiles_and_lines() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 0.999), 100.0);
        let (slope, intercept) = fit_line(&[(1.0, 12.0), (2.0, 22.0), (3.0, 32.0)]);
        assert!((slope - 10.0).abs() < 1e-9 && (intercept - 2.0).abs() < 1e-9);
    }

    #[test]
    fn steal_is_the_eighth_counter() {
        let times = CpuTimes::parse("cpu  100 0 50 800 0 0 0 50 0 0");
        assert_eq!((times.steal, times.total), (50, 1000));
    }
}
