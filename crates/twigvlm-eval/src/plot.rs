//! Line charts for the benchmark and RelAcc results, written as PNG. Text needs a TrueType
//! font; the first of [`FONT_PATHS`] that exists is used (Debian: `fonts-dejavu-core`).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Where common systems keep a sans-serif TrueType font.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];
const FONT_FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);
const MARGIN: u32 = 16;
const TITLE_PX: u32 = 24;
const LABEL_PX: u32 = 16;
const AXIS_AREA: u32 = 48;
const POINT_RADIUS: u32 = 4;

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis titles and the chart's title.
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

fn register_system_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = FONT_PATHS.iter().find(|p| Path::new(p).is_file()).ok_or_else(|| {
            format!(
                "no TrueType font found for plot text (looked for {}); on Debian: apt-get install fonts-dejavu-core",
                FONT_PATHS.join(", ")
            )
        })?;
        let bytes: &'static [u8] =
            Box::leak(std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?.into_boxed_slice());
        register_font(FONT_FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

type Chart<'a> = ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart over `x` × `y` on a white canvas; `draw` adds the mesh and the data, and the
/// result is written as PNG.
fn draw_chart(
    path: &Path,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
    draw: impl FnOnce(&mut Chart<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    register_system_font()?;
    let mut buffer = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT_FAMILY, TITLE_PX))
            .margin(MARGIN)
            .x_label_area_size(AXIS_AREA)
            .y_label_area_size(AXIS_AREA + MARGIN)
            .build_cartesian_2d(x, y)?;
        draw(&mut chart)?;
        root.present()?;
    }
    save_png(path, SIZE, buffer)
}

/// Draws `series` as lines with markers and writes a PNG to `path`.
pub fn line_chart(path: &Path, labels: &Labels<'_>, series: &[Series]) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let span = |values: Vec<f64>| {
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-6);
        if lo.is_finite() {
            (lo - pad)..(hi + pad)
        } else {
            0.0..1.0
        }
    };
    let (x_range, y_range) = (span(points().map(|p| p.0).collect()), span(points().map(|p| p.1).collect()));
    draw_chart(path, labels.title, x_range, y_range, |chart| {
        chart
            .configure_mesh()
            .x_desc(labels.x)
            .y_desc(labels.y)
            .label_style((FONT_FAMILY, LABEL_PX))
            .axis_desc_style((FONT_FAMILY, LABEL_PX))
            .draw()?;
        for (index, line) in series.iter().enumerate() {
            let colour = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))?
                .label(&line.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, POINT_RADIUS, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, LABEL_PX))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Draws one bar per `(name, value)` with the value printed above it, and writes a PNG.
pub fn bar_chart(path: &Path, labels: &Labels<'_>, bars: &[(String, f64)]) -> anyhow::Result<()> {
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-6) * 1.15;
    draw_chart(path, labels.title, -0.5..bars.len() as f64 - 0.5, 0.0..top, |chart| {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len())
            .x_label_formatter(&|x| bars.get(x.round().max(0.0) as usize).map_or(String::new(), |b| b.0.clone()))
            .x_desc(labels.x)
            .y_desc(labels.y)
            .label_style((FONT_FAMILY, LABEL_PX))
            .axis_desc_style((FONT_FAMILY, LABEL_PX))
            .draw()?;
        for (index, (_, value)) in bars.iter().enumerate() {
            let (x, colour) = (index as f64, Palette99::pick(index).to_rgba());
            chart
                .draw_series(std::iter::once(Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *value)], colour.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{value:.2}"),
                (x - 0.15, value + top * 0.02),
                (FONT_FAMILY, LABEL_PX),
            )))?;
        }
        Ok(())
    })
}

/// Draws each `(text, (x, y))` onto an RGB buffer of `size`.
pub fn write_text(buffer: &mut [u8], size: (u32, u32), texts: &[(String, (i32, i32))]) -> anyhow::Result<()> {
    register_system_font()?;
    let root = BitMapBackend::with_buffer(buffer, size).into_drawing_area();
    for (text, at) in texts {
        root.draw(&Text::new(text.as_str(), *at, (FONT_FAMILY, LABEL_PX + 2)))?;
    }
    root.present()?;
    Ok(())
}

/// Writes an RGB buffer of `size` as PNG, creating the parent directory.
pub fn save_png(path: &Path, size: (u32, u32), buffer: Vec<u8>) -> anyhow::Result<()> {
    let image = image::RgbImage::from_raw(size.0, size.1, buffer).context("image buffer has the wrong size")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    image.save(path).with_context(|| format!("cannot write {}", path.display()))
}
