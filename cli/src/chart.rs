//! The benchmarks' chart writer: SVG charts of the figures they print, one function per kind of
//! chart, so every benchmark's pictures look alike.

use std::path::Path;

use plotters::prelude::*;

type CResult = Result<(), Box<dyn std::error::Error>>;

/// The colours of the series, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// A grouped bar chart: one group of bars per entry of `groups` (labelled below it), one bar
/// per series in each group (`series[s].1[g]` is series `s` in group `g`), a legend with the
/// series' names.
///
/// ```no_run
/// cairn_cli::chart::grouped_bars(
///     std::path::Path::new("restore.svg"),
///     "restore, ms",
///     &["1 -> 2".into(), "2 -> 1".into()],
///     &[("rescaling", vec![900.0, 800.0]), ("same parallelism", vec![850.0, 870.0])],
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn grouped_bars(
    path: &Path,
    title: &str,
    groups: &[String],
    series: &[(&str, Vec<f64>)],
) -> CResult {
    let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = groups.len().max(1) as f64;
    let max_y = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..max_y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x| groups.get(x.floor() as usize).cloned().unwrap_or_default())
        .draw()?;
    let width = 0.7 / series.len().max(1) as f64;
    for (s, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let bars = values.iter().enumerate().map(|(g, &v)| {
            let x = g as f64 + 0.15 + s as f64 * width;
            Rectangle::new([(x, 0.0), (x + width * 0.95, v)], colour.filled())
        });
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
