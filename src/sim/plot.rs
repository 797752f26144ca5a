//! `sim --plot`: hit rate and predicted tokens/s against budget, one line per policy, as SVG
//! or PNG (chosen by the file extension), drawn with plotters (PNG text from an embedded
//! bitmap font, see `bitmap_text.rs`).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::SimReport;
use super::bitmap_text::TextBitMap;
use crate::{Error, Result};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `report` to `path` (`.svg` or `.png`).
pub fn plot(report: &SimReport, path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    let size = (1100, 450);
    let fail = |e: String| Error::input(format!("plot {}: {e}", path.display()));
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(report, &root).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        Some("png") => {
            let root = TextBitMap::new(BitMapBackend::new(path, size)).into_drawing_area();
            draw(report, &root).map_err(fail)?;
            root.present().map_err(|e| fail(e.to_string()))
        }
        _ => Err(Error::InvalidOption(format!(
            "--plot {}: the extension must be .svg or .png",
            path.display()
        ))),
    }
}

fn draw<DB: DrawingBackend>(
    report: &SimReport,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(550);
    // Budgets as a fraction of all expert bytes, so "25%" and "2GiB" share an axis.
    let total = report.total_expert_bytes.max(1) as f64;
    let mut policies: Vec<&str> = Vec::new();
    for r in &report.results {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let xs: Vec<f64> =
        report.results.iter().map(|r| r.budget_bytes as f64 / total * 100.0).collect();
    let x_max = xs.iter().copied().fold(1.0, f64::max) * 1.05;
    let tps_max = report.results.iter().map(|r| r.tokens_per_second).fold(1e-9, f64::max) * 1.1;
    let title = report.model.as_deref().unwrap_or("trace");
    for (area, is_rate) in [(&left, true), (&right, false)] {
        let y_max = if is_rate { 100.0 } else { tps_max };
        let caption = if is_rate {
            format!("{title}: hit rate")
        } else {
            format!("{title}: predicted tokens/s")
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("budget (% of expert bytes)")
            .y_desc(if is_rate { "hit rate (%)" } else { "tokens/s" })
            .draw()
            .map_err(|e| err(&e))?;
        for (pi, p) in policies.iter().enumerate() {
            let color = COLORS[pi % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = report
                .results
                .iter()
                .zip(&xs)
                .filter(|(r, _)| r.policy == *p)
                .map(|(r, &x)| (x, if is_rate { r.hit_rate * 100.0 } else { r.tokens_per_second }))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(p.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|pt| Circle::new(pt, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}
