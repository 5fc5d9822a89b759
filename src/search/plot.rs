//! The sweep's picture: D against achieved sparsity, after the skip phase and after re-use.
//!
//! Text is drawn with a pure-Rust rasterizer (plotters' `ab_glyph`) from a system TrueType font,
//! so nothing needs fontconfig or freetype at build time. Without a usable font the plot is
//! still written, only without labels (and a warning says so).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::Level;

const WIDTH: u32 = 800;
const HEIGHT: u32 = 500;

/// Fonts tried in order; `SKRR_FONT` names another one.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers the first readable font as plotters' "sans-serif" once per process.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var_os("SKRR_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the whole process; one font file, leaked once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                log::debug!("plot font: {}", path.display());
                return true;
            }
        }
        log::warn!("no TrueType font found (set SKRR_FONT=/path/to/font.ttf): plot has no labels");
        false
    })
}

/// Writes a PNG of D (skip phase and final) against achieved sparsity, one point per level;
/// drawn beside `path` under a temporary name and renamed into place, so it appears whole.
pub fn write_png(levels: &[Level], method: &str, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".skrr-plot.")
        .suffix(".png")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    draw(levels, method, tmp.path(), font_available())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot draw the sweep plot {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn draw(
    levels: &[Level],
    method: &str,
    path: &Path,
    labels: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut pts: Vec<&Level> = levels.iter().collect();
    pts.sort_by(|a, b| a.sparsity.total_cmp(&b.sparsity));
    let finite = |d: f64| if d.is_finite() { d } else { 0.0 };
    let x_max = pts.iter().map(|l| l.sparsity).fold(0.0, f64::max);
    let y_max = pts
        .iter()
        .flat_map(|l| [finite(l.d_skip), finite(l.d_final)])
        .fold(0.0, f64::max);
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labels {
        builder
            .caption(
                format!("{method}: discrepancy D vs sparsity"),
                ("sans-serif", 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(80);
    }
    let mut chart = builder.build_cartesian_2d(
        0.0..(x_max * 1.1).max(0.05),
        0.0..(y_max * 1.1).max(f64::MIN_POSITIVE),
    )?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc("achieved sparsity (removed / all parameters)")
            .y_desc("D = D_c + D_null")
            .y_label_formatter(&|y| format!("{y:.2e}"));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    let series = [
        (
            "after skip",
            RED,
            pts.iter().map(|l| (l.sparsity, finite(l.d_skip))).collect(),
        ),
        (
            "after re-use",
            BLUE,
            pts.iter()
                .map(|l| (l.sparsity, finite(l.d_final)))
                .collect(),
        ),
    ];
    for (name, color, data) in series {
        let data: Vec<(f64, f64)> = data;
        let s = chart.draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?;
        if labels {
            s.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(data.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    if labels {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(s: f64, d: f64) -> Level {
        Level {
            target: s,
            sparsity: s,
            params_removed: 0,
            skip_order: vec![],
            d_skip: d,
            d_final: d * 0.8,
            actions: vec![],
        }
    }

    #[test]
    fn writes_a_png_with_and_without_labels() {
        let dir = tempfile::tempdir().unwrap();
        let levels = [level(0.3, 0.02), level(0.1, 0.001), level(0.2, 0.006)];
        for labels in [false, font_available()] {
            let p = dir.path().join(format!("sweep-{labels}.png"));
            draw(&levels, "skrr", &p, labels).unwrap();
            if labels {
                let q = dir.path().join("via-write.png");
                write_png(&levels, "skrr", &q).unwrap();
                assert_eq!(std::fs::read(&q).unwrap(), std::fs::read(&p).unwrap());
            }
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // IHDR: width and height, big-endian, at bytes 16..24
            assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), WIDTH);
            assert_eq!(
                u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
                HEIGHT
            );
        }
    }
}
