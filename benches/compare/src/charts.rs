//! PNG charts with plotters' bitmap backend: commands/s against threads per
//! workload, and latency percentiles per workload at the targets' thread count.
//! Text is drawn with a bundled DejaVu Sans Mono (`assets/`, Bitstream Vera
//! licence) through ab_glyph, so no system fonts or fontconfig are needed.

use crate::engines::Kind;
use crate::report::{Report, TARGET_THREADS};
use crate::workload::Workload;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

type ChartResult<T> = Result<T, Box<dyn std::error::Error>>;

fn color(k: Kind) -> RGBColor {
    match k {
        Kind::Shardstone => RGBColor(214, 39, 40),
        Kind::ShardstoneBedrock => RGBColor(255, 127, 14),
        Kind::Redb => RGBColor(31, 119, 180),
        Kind::Fjall => RGBColor(44, 160, 44),
        Kind::Canopydb => RGBColor(148, 103, 189),
        Kind::Lmdb => RGBColor(140, 86, 75),
        Kind::Rocksdb => RGBColor(23, 190, 207),
    }
}

/// Short panel titles.
fn title(w: Workload) -> &'static str {
    match w {
        Workload::W1 => "W1 uncontended 1-key RMW",
        Workload::W2 => "W2 4-key RMW, Zipf 0.99",
        Workload::W3 => "W3 95% reads, Zipf 0.99",
        Workload::W4Fast => "W4 fast commands alone",
        Workload::W4Mixed => "W4 fast cmds, 1% slow beside",
        Workload::W5 => "W5 fsync every commit",
        Workload::W6 => "W6 shared-leaf blind writes",
        Workload::W6Rmw => "W6 shared-leaf RMW",
        Workload::W7 => "W7 order service",
        Workload::W8Fast => "W8 fast commands alone",
        Workload::W8Storm => "W8 storm: 1% slow on hot keys",
        Workload::Counter => "Counter: one hot counter",
        Workload::TaxMany => "Sharing tax: N engines x 1 thread",
        Workload::TaxOne => "Sharing tax: 1 engine x N threads",
    }
}

/// Draws both charts into `dir`; returns their paths.
pub fn draw(report: &Report, dir: &Path) -> ChartResult<Vec<PathBuf>> {
    // Registering twice (a second call in one process) is harmless.
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "bundled font unreadable")?;
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| !report.threads_of(*w).is_empty())
        .collect();
    let throughput = dir.join("throughput.png");
    let latency = dir.join("latency.png");
    throughput_chart(report, &workloads, &throughput)?;
    latency_chart(report, &workloads, &latency)?;
    Ok(vec![throughput, latency])
}

/// Panels in a grid of 3 columns.
fn grid(n: usize) -> (usize, usize) {
    (n.div_ceil(3).max(1), n.clamp(1, 3))
}

fn throughput_chart(report: &Report, workloads: &[Workload], path: &Path) -> ChartResult<()> {
    let (rows, cols) = grid(workloads.len());
    let root = BitMapBackend::new(path, (480 * cols as u32, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "commands/s vs threads, {} keys, {} CPUs",
            report.keys, report.cores
        ),
        ("sans-serif", 18),
    )?;
    for (panel, &w) in root.split_evenly((rows, cols)).iter().zip(workloads) {
        let threads = report.threads_of(w);
        let max_t = *threads.last().unwrap_or(&1) as f64;
        // Threads double from point to point: plot them at log2, evenly spaced.
        let max_y = report
            .cells
            .iter()
            .filter(|c| c.workload == w)
            .map(|c| c.commands_per_sec / 1e3)
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(title(w), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.3f64..max_t.log2() + 0.3, 0f64..max_y * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("threads (log scale)")
            .y_desc("K commands/s")
            .x_labels(threads.len() + 2)
            .x_label_formatter(&|x| {
                // The axis is log2(threads): label the whole powers only.
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                    format!("{}", 1u64 << x.round() as u32)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 12))
            .draw()?;
        let series = report.engines().into_iter().map(|k| {
            let points = threads
                .iter()
                .filter_map(|&t| report.cell(k, w, t))
                .map(|c| ((c.threads as f64).log2(), c.commands_per_sec / 1e3))
                .collect();
            (k, points)
        });
        draw_engines(&mut chart, series)?;
    }
    root.present()?;
    Ok(())
}

fn latency_chart(report: &Report, workloads: &[Workload], path: &Path) -> ChartResult<()> {
    let (rows, cols) = grid(workloads.len());
    let root = BitMapBackend::new(path, (480 * cols as u32, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "latency percentiles, µs, retries included",
        ("sans-serif", 18),
    )?;
    const LABELS: [&str; 4] = ["p50", "p99", "p99.9", "max"];
    for (panel, &w) in root.split_evenly((rows, cols)).iter().zip(workloads) {
        let threads = report.threads_of(w);
        let t = if threads.contains(&TARGET_THREADS) {
            TARGET_THREADS
        } else {
            threads[0]
        };
        let series: Vec<(Kind, [f64; 4])> = report
            .engines()
            .into_iter()
            .filter_map(|k| report.cell(k, w, t).map(|c| (k, c.latency)))
            .map(|(k, l)| (k, [l.p50_us, l.p99_us, l.p999_us, l.max_us]))
            .collect();
        let all = series.iter().flat_map(|(_, v)| v.iter().copied());
        let lo = all.clone().fold(f64::MAX, f64::min).max(0.01);
        let hi = all.fold(0.0, f64::max).max(lo * 10.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} ({t} threads)", title(w)), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.3f64..3.3, (lo / 2.0..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|x| {
                LABELS
                    .get(x.round().max(0.0) as usize)
                    .map_or(String::new(), |s| s.to_string())
            })
            .y_desc("µs")
            .label_style(("sans-serif", 12))
            .draw()?;
        let series = series.into_iter().map(|(k, values)| {
            let points = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect();
            (k, points)
        });
        draw_engines(&mut chart, series)?;
    }
    root.present()?;
    Ok(())
}

/// One line with point marks per engine, and the legend.
fn draw_engines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: impl Iterator<Item = (Kind, Vec<(f64, f64)>)>,
) -> ChartResult<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (k, points) in series {
        let style = color(k).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(k.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color(k).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
