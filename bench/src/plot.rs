//! PNG plots: latency distribution per path (one chart per connection mode
//! and guest count) and the boot-storm completion curves.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::http1::ConnMode;
use crate::results::Results;
use crate::world::PathKind;

/// Debian's fonts-dejavu-core (cargo xtask setup installs it); plotters is
/// built without fontconfig, so the font is given to it by path.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Plotted up to this quantile (99.99%).
const MAX_NINES: f64 = 4.0;

fn register_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes =
            std::fs::read(FONT).map_err(|e| format!("{FONT}: {e} (install fonts-dejavu-core)"))?;
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn color(path: PathKind) -> RGBColor {
    match path {
        PathKind::Ours => RGBColor(0x1f, 0x77, 0xb4),
        PathKind::Neutron => RGBColor(0xd6, 0x27, 0x28),
        PathKind::Limit => RGBColor(0x2c, 0xa0, 0x2c),
        PathKind::Baseline => RGBColor(0x7f, 0x7f, 0x7f),
        PathKind::Ours6 => RGBColor(0x94, 0x67, 0xbd),
    }
}

pub fn write_all(results: &Results, out: &Path) -> Result<()> {
    register_font()?;
    for mode in [ConnMode::KeepAlive, ConnMode::Close] {
        for &guests in &results.plan.load_guests {
            let series: Vec<(PathKind, &Histogram<u64>)> = PathKind::ALL
                .iter()
                .filter_map(|&p| results.histograms.get(&(p, mode, guests)).map(|h| (p, h)))
                .filter(|(_, h)| !h.is_empty())
                .collect();
            if series.is_empty() {
                continue;
            }
            let name = match mode {
                ConnMode::KeepAlive => "keep-alive",
                ConnMode::Close => "close",
            };
            let file = out.join(format!("latency-{name}-{guests}.png"));
            let title = format!("Latency, {}, {guests} guests", mode.label());
            latency_chart(&file, &title, &series)
                .with_context(|| format!("plotting {}", file.display()))?;
        }
    }
    for &guests in &results.plan.storm_guests {
        let curves: Vec<(PathKind, &[f64])> = [PathKind::Ours, PathKind::Neutron]
            .iter()
            .filter_map(|&p| {
                results
                    .median_storm_run(p, guests)
                    .map(|r| (p, r.completions_ms.as_slice()))
            })
            .collect();
        if curves.is_empty() {
            continue;
        }
        let file = out.join(format!("boot-storm-{guests}.png"));
        storm_chart(&file, guests, &curves)
            .with_context(|| format!("plotting {}", file.display()))?;
    }
    Ok(())
}

/// (nines, ms) points: x = -log10(1 - quantile), so 1 is p90, 2 p99, 3 p99.9.
fn percentile_points(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    hist.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1e3))
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ms)| (-(1.0 - q).log10(), ms))
        .filter(|(x, _)| *x <= MAX_NINES)
        .collect()
}

fn latency_chart(file: &Path, title: &str, series: &[(PathKind, &Histogram<u64>)]) -> Result<()> {
    let points: Vec<(PathKind, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(p, h)| (*p, percentile_points(h)))
        .collect();
    let max = points
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, y)| *y))
        .fold(0.01_f64, f64::max);
    let min = points
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, y)| *y))
        .fold(max, f64::min)
        .max(0.001);
    let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..MAX_NINES, (min * 0.8..max * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log)")
        .x_labels(5)
        .x_label_formatter(&|x| {
            let percent = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{percent:.2}%")
        })
        .draw()?;
    for (path, pts) in points {
        let style = color(path).stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts, style))?
            .label(path.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn storm_chart(file: &Path, guests: usize, curves: &[(PathKind, &[f64])]) -> Result<()> {
    let max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .fold(1.0_f64, f64::max);
    let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Boot storm, {guests} guests: share done over time"),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max * 1.05, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("time since the storm began (ms)")
        .y_desc("guests done (%)")
        .draw()?;
    for (path, completions) in curves {
        let n = completions.len() as f64;
        let mut pts = vec![(0.0, 0.0)];
        pts.extend(
            completions
                .iter()
                .enumerate()
                .map(|(i, &t)| (t, (i + 1) as f64 / n * 100.0)),
        );
        let style = color(*path).stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts, style))?
            .label(path.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
