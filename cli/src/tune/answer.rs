//! What a sweep found: each point's figures over its repetitions, and the short answer — the
//! best point for the objective and how far it is from the second best in units of the noise.
//!
//! The noise is the repetitions' pooled standard deviation of the objective (every point with
//! two or more repetitions contributes its squared deviations from its own mean): on a shared
//! machine it is the figure that says whether a gap means anything. Points are ranked by their
//! median, which one slow repetition does not move.

use serde::Serialize;

use super::measure::{Measurement, Metric};

/// One metric of one point over its repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Median of the repetitions.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Self> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One point's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PointStats {
    /// Index in the grid.
    pub point: usize,
    /// Its values joined by ` / `.
    pub label: String,
    /// Its `key=value` pairs.
    pub settings: String,
    /// Repetitions measured.
    pub reps: usize,
    /// Per metric (in [`Metric::ALL`] order), `None` before the first repetition.
    pub metrics: Vec<(Metric, Option<Spread>)>,
    /// The objective's values per repetition, in repetition order (for the noise).
    #[serde(skip)]
    objective_values: Vec<f64>,
}

impl PointStats {
    /// The spread of `metric`, if measured.
    pub fn spread(&self, metric: Metric) -> Option<Spread> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .and_then(|(_, s)| *s)
    }
}

/// Each point's figures from its repetitions (`measured[i]` are point `i`'s).
pub fn point_stats(
    labels: &[(String, String)],
    measured: &[Vec<Measurement>],
    objective: Metric,
) -> Vec<PointStats> {
    labels
        .iter()
        .zip(measured)
        .enumerate()
        .map(|(point, ((label, settings), ms))| PointStats {
            point,
            label: label.clone(),
            settings: settings.clone(),
            reps: ms.len(),
            metrics: Metric::ALL
                .iter()
                .map(|&m| {
                    let v: Vec<f64> = ms.iter().map(|x| m.of(x)).collect();
                    (m, Spread::of(&v))
                })
                .collect(),
            objective_values: ms.iter().map(|x| objective.of(x)).collect(),
        })
        .collect()
}

/// The best point and its distance to the runner-up.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// What was optimised.
    pub objective: Metric,
    /// Index of the best point (by median).
    pub best: usize,
    /// Index of the second best, when there are two measured points.
    pub second: Option<usize>,
    /// `|median(best) - median(second)|` in the objective's unit.
    pub gap: Option<f64>,
    /// Pooled standard deviation of the repetitions, `None` with one repetition per point.
    pub noise: Option<f64>,
    /// `gap / noise`.
    pub gap_in_noise: Option<f64>,
    /// The answer in a few sentences.
    pub text: String,
}

/// The answer for `objective` over `stats` (`None` when no point is measured yet).
pub fn answer(stats: &[PointStats], objective: Metric) -> Option<Answer> {
    let mut ranked: Vec<(&PointStats, f64)> = stats
        .iter()
        .filter_map(|p| p.spread(objective).map(|s| (p, s.median)))
        .collect();
    ranked.sort_by(|a, b| {
        let order = a.1.total_cmp(&b.1);
        if objective.higher_is_better() {
            order.reverse()
        } else {
            order
        }
    });
    let (best, best_median) = *ranked.first()?;
    let noise = pooled_sd(stats);
    let second = ranked.get(1).copied();
    let gap = second.map(|(_, m)| (best_median - m).abs());
    let gap_in_noise = match (gap, noise) {
        (Some(g), Some(n)) if n > 0.0 => Some(g / n),
        _ => None,
    };
    let unit = objective.title();
    let mut text = format!(
        "best for {unit} ({}): {} -> {} (median of {})",
        if objective.higher_is_better() {
            "higher is better"
        } else {
            "lower is better"
        },
        best.settings,
        fmt(best_median),
        best.reps
    );
    if let Some((s, m)) = second {
        text += &format!(
            "\nsecond: {} -> {}; gap {}",
            s.settings,
            fmt(m),
            fmt(gap.unwrap_or(0.0))
        );
        match (noise, gap_in_noise) {
            (Some(n), Some(k)) => {
                text += &format!(" = {k:.1} x the noise (pooled sd {})", fmt(n));
                text += if k >= 3.0 {
                    ": the best point is clearly ahead"
                } else if k >= 1.0 {
                    ": probably ahead; more --reps would tell"
                } else {
                    ": within the noise, the two are not distinguishable"
                };
            }
            _ => text += "; noise unknown (one repetition per point: use --reps 3 or more)",
        }
    }
    Some(Answer {
        objective,
        best: best.point,
        second: second.map(|(s, _)| s.point),
        gap,
        noise,
        gap_in_noise,
        text,
    })
}

/// The pooled standard deviation of the objective over points with >= 2 repetitions.
fn pooled_sd(stats: &[PointStats]) -> Option<f64> {
    let (mut ss, mut dof) = (0.0, 0usize);
    for p in stats.iter().filter(|p| p.objective_values.len() >= 2) {
        let v = &p.objective_values;
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        ss += v.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
        dof += v.len() - 1;
    }
    (dof > 0).then(|| (ss / dof as f64).sqrt())
}

/// A figure with three significant digits (or whole when large).
pub fn fmt(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rps: f64, rss_mib: u64) -> Measurement {
        Measurement {
            records_per_sec: rps,
            latency_p99_ms: 1.0,
            sync_pause_p99_ms: 1.0,
            uploaded_bytes: 0,
            rss_peak_bytes: rss_mib << 20,
            disk_bytes: 0,
            checkpoints: 0,
        }
    }

    fn labels(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("{i}"), format!("k={i}"))).collect()
    }

    #[test]
    fn the_best_median_wins_and_the_gap_is_in_noise_units() {
        let measured = vec![
            vec![m(100.0, 50), m(102.0, 50), m(98.0, 50)],
            vec![m(110.0, 80), m(112.0, 80), m(108.0, 80)],
            vec![m(90.0, 40), m(92.0, 40), m(1000.0, 40)],
        ];
        let stats = point_stats(&labels(3), &measured, Metric::Throughput);
        assert_eq!(stats[2].spread(Metric::Throughput).expect("m").median, 92.0);
        let a = answer(&stats, Metric::Throughput).expect("answer");
        assert_eq!((a.best, a.second), (1, Some(0)));
        assert_eq!(a.gap, Some(10.0));
        assert!(
            a.text.contains("k=1") && a.text.contains("second: k=0"),
            "{}",
            a.text
        );
        // Lower is better for RSS.
        let stats = point_stats(&labels(3), &measured, Metric::Rss);
        let a = answer(&stats, Metric::Rss).expect("answer");
        assert_eq!(a.best, 2);
        assert_eq!(a.noise, Some(0.0));
        assert_eq!(a.gap_in_noise, None);
    }

    #[test]
    fn pooled_noise_and_its_verdicts() {
        // Two points, deviations +-1 around their means: pooled sd = 1.
        let measured = vec![vec![m(9.0, 1), m(11.0, 1)], vec![m(14.0, 1), m(16.0, 1)]];
        let stats = point_stats(&labels(2), &measured, Metric::Throughput);
        let a = answer(&stats, Metric::Throughput).expect("answer");
        let k = a.gap_in_noise.expect("k");
        assert!((k - 5.0 / 2f64.sqrt()).abs() < 1e-9, "{k}");
        assert!(a.text.contains("clearly ahead"), "{}", a.text);
        let close = vec![vec![m(9.0, 1), m(11.0, 1)], vec![m(9.5, 1), m(11.5, 1)]];
        let stats = point_stats(&labels(2), &close, Metric::Throughput);
        let a = answer(&stats, Metric::Throughput).expect("answer");
        assert!(a.text.contains("not distinguishable"), "{}", a.text);
        let once = vec![vec![m(9.0, 1)], vec![m(10.0, 1)], vec![]];
        let stats = point_stats(&labels(3), &once, Metric::Throughput);
        let a = answer(&stats, Metric::Throughput).expect("answer");
        assert_eq!(a.noise, None);
        assert!(a.text.contains("noise unknown"), "{}", a.text);
        assert!(
            answer(
                &point_stats(&labels(1), &[vec![]], Metric::Rss),
                Metric::Rss
            )
            .is_none()
        );
    }
}
