//! The benchmarks' chart writer: SVG charts of the figures they print, one function per kind of
//! chart, so every benchmark's pictures look alike.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
    // No tick labels on x: plotters puts them at round values of the axis, which skips groups
    // once there are more than a few. Each group's name is drawn centred under it instead.
    chart.configure_mesh().disable_x_mesh().x_labels(0).draw()?;
    let label = ("sans-serif", 12)
        .into_text_style(&root)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (g, name) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        root.draw(&Text::new(name.clone(), (x, y + 6), label.clone()))?;
    }
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

/// One panel of [`bar_panels`]: a bar per point at its median, with a whisker from its
/// smallest to its largest repetition.
pub struct BarPanel {
    /// Its caption.
    pub caption: String,
    /// `(median, min, max)` per point; `None` for a point not measured.
    pub bars: Vec<Option<(f64, f64, f64)>>,
    /// The point drawn in the highlight colour (the sweep's best for its objective).
    pub highlight: Option<usize>,
}

/// Bar panels in a grid of two columns sharing the points on their x axes (`labels[i]` under
/// bar `i`): how a sweep shows several figures per point and their noise.
///
/// ```no_run
/// use cairn_cli::chart::{BarPanel, bar_panels};
/// bar_panels(
///     std::path::Path::new("tune.svg"),
///     &["64MiB".into(), "128MiB".into()],
///     &[BarPanel {
///         caption: "records/s".into(),
///         bars: vec![Some((9e5, 8.8e5, 9.1e5)), Some((1.1e6, 1.0e6, 1.2e6))],
///         highlight: Some(1),
///     }],
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn bar_panels(path: &Path, labels: &[String], panels: &[BarPanel]) -> CResult {
    let rows = panels.len().div_ceil(2).max(1);
    let root = SVGBackend::new(path, (1200, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, 2));
    let n = labels.len().max(1) as f64;
    for (area, panel) in areas.iter().zip(panels) {
        let max_y = panel
            .bars
            .iter()
            .flatten()
            .map(|b| b.2)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n, 0f64..max_y)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&|x| {
                // Labels sit under the bars' centres (i + 0.5).
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (i, bar) in panel.bars.iter().enumerate() {
            let Some((median, lo, hi)) = *bar else {
                continue;
            };
            let colour = if panel.highlight == Some(i) {
                COLOURS[0]
            } else {
                COLOURS[1]
            };
            let x = i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.2, 0.0), (x + 0.8, median)],
                colour.filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x + 0.5, lo), (x + 0.5, hi)],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every group is labelled, however many there are (plotters' own tick labels skipped
    /// every other one of six).
    #[test]
    fn every_group_gets_its_label() -> CResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bars.svg");
        let groups: Vec<String> = (0..9).map(|g| format!("group-{g}")).collect();
        let values: Vec<f64> = (0..9).map(|g| g as f64 + 1.0).collect();
        grouped_bars(&path, "t", &groups, &[("a", values.clone()), ("b", values)])?;
        let svg = std::fs::read_to_string(&path)?;
        for g in &groups {
            assert_eq!(svg.matches(g.as_str()).count(), 1, "{g}");
        }
        Ok(())
    }
}
