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

/// One line of a [`line_panels`] panel: points `(x, y)`.
pub struct Line {
    /// The legend's name.
    pub name: String,
    /// The points, ascending `x`.
    pub points: Vec<(u64, f64)>,
    /// Drawn dashed and thin (a reference, not a measured variant).
    pub dashed: bool,
}

/// One panel of [`line_panels`].
pub struct Panel {
    /// Its caption.
    pub caption: String,
    /// Its lines; the first measured line gets the first colour.
    pub lines: Vec<Line>,
}

/// Panels stacked one above the other sharing the x axis (`x_desc`, e.g. `checkpoint`), one
/// line per series: how benchmarks show a quantity over many checkpoints per variant.
pub fn line_panels(path: &Path, x_desc: &str, panels: &[Panel]) -> CResult {
    let height = 350 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    let max_x = panels
        .iter()
        .flat_map(|p| p.lines.iter())
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    for (area, panel) in areas.iter().zip(panels) {
        let max_y = panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..max_x + 1, 0f64..max_y)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .light_line_style(WHITE)
            .draw()?;
        for (i, line) in panel.lines.iter().enumerate() {
            let points = line.points.iter().copied();
            if line.dashed {
                let colour = BLUE.mix(0.6);
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, colour.stroke_width(1)))?
                    .label(line.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            } else {
                let colour = COLOURS[i % COLOURS.len()];
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                    .label(line.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
