//! Plots of a run, as SVG: per-packet cost by path, and Mpps by system.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::{format_value, Measurement};

/// Writes every plot whose group has results; returns their paths.
pub fn write_all(measurements: &[Measurement], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (group, unit, file, title) in [
        ("per-packet", "ns/packet", "per-packet.svg", "Per-packet cost by path (ns/packet, lower is better)"),
        ("forwarding", "Mpps", "forwarding.svg", "Forwarding rate by system (Mpps, higher is better)"),
    ] {
        let bars: Vec<(&str, f64)> = measurements
            .iter()
            .filter(|m| m.group == group && m.unit == unit)
            // One bar per path: the net figure, not the raw one and the
            // wrapper it was corrected by (both stay in the report).
            .filter(|m| !m.name.contains("[raw") && !m.name.starts_with("restore wrapper alone"))
            .map(|m| (m.name.as_str(), m.value))
            .collect();
        if bars.is_empty() {
            continue;
        }
        let path = dir.join(file);
        bar_chart(&path, title, unit, &bars)?;
        written.push(path);
    }
    Ok(written)
}

/// A horizontal bar chart, one bar per (label, value), labelled with its value.
pub fn bar_chart(path: &Path, title: &str, unit: &str, bars: &[(&str, f64)]) -> Result<()> {
    let longest = bars.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(10) as u32;
    let label_width = (longest * 11 / 2 + 20).clamp(120, 1200);
    let height = 90 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (label_width + 560, height)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let top = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.18 } else { 1.0 };
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..top, (0..n).into_segmented())
        .map_err(draw)?;
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) if (0..n).contains(i) => bars[(n - 1 - i) as usize].0.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&label)
        .x_desc(unit)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(draw)?;
    // The first bar at the top.
    let rows = bars.iter().enumerate().map(|(k, &(_, value))| (n - 1 - k as i32, value));
    chart
        .draw_series(rows.clone().map(|(i, value)| {
            let mut bar = Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (value, SegmentValue::Exact(i + 1))],
                BLUE.mix(0.6).filled(),
            );
            bar.set_margin(5, 5, 0, 0);
            bar
        }))
        .map_err(draw)?;
    chart
        .draw_series(rows.map(|(i, value)| {
            Text::new(format!(" {}", format_value(value)), (value, SegmentValue::CenterOf(i)), ("sans-serif", 12))
        }))
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bar_chart_is_an_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("gslb-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bars.svg");
        super::bar_chart(&path, "title", "ns/packet", &[("first path", 12.5), ("second path", 40.0)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["title", "first path", "second path", "12.50", "40"] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
    }
}
