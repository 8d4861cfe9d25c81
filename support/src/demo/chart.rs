//! The quickstart's picture (plotters, SVG backend only): request latency
//! p50 and p99 per time bucket over the run, and each worker's health
//! state as a timeline below it.

use std::path::Path;
use std::time::Duration;

use foreman_driver::WorkerHealthStatus;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{nanos, spans, RunData};
use super::DemoError;
use crate::percentile;

/// How many time buckets the latency lines have.
pub const BUCKETS: u32 = 40;

const WIDTH: u32 = 960;
const LATENCY_HEIGHT: u32 = 300;
const ROW_HEIGHT: u32 = 22;
const FONT: &str = "sans-serif";
const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);
const HEALTHY: RGBColor = RGBColor(44, 160, 44);
const DEGRADED: RGBColor = RGBColor(255, 165, 0);
const UNAVAILABLE: RGBColor = RGBColor(200, 30, 30);

/// The latency percentiles of the requests answered in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// The bucket's middle, since the pool was built.
    pub middle: Duration,
    /// The median submit-to-answer time of its requests.
    pub p50: Duration,
    /// Their 99th percentile.
    pub p99: Duration,
}

/// `[start, end]` cut in `count` equal buckets, each with the percentiles
/// of the submit-to-answer times of the requests answered in it; buckets
/// without an answer are left out.
pub fn latency_buckets(data: &RunData, count: u32) -> Vec<Bucket> {
    let count = count.max(1);
    let width = data.end.saturating_sub(data.start) / count;
    let mut totals = vec![Vec::new(); count as usize];
    for record in &data.records {
        let since = record.answered.saturating_sub(data.start);
        let index = if width.is_zero() {
            0
        } else {
            (since.as_nanos() / width.as_nanos()).min(u128::from(count - 1)) as usize
        };
        if let Some(bucket) = totals.get_mut(index) {
            bucket.push(nanos(record.total));
        }
    }
    totals
        .into_iter()
        .zip(0u32..)
        .filter_map(|(mut values, index)| {
            values.sort_unstable();
            Some(Bucket {
                middle: data.start + width * index + width / 2,
                p50: Duration::from_nanos(percentile(&values, 50)?),
                p99: Duration::from_nanos(percentile(&values, 99)?),
            })
        })
        .collect()
}

/// The chart of `data` as an SVG document.
///
/// # Errors
/// [`DemoError::Chart`] if plotters cannot draw it.
pub fn render_svg(data: &RunData) -> Result<String, DemoError> {
    let rows = u32::try_from(data.workers.len()).unwrap_or(u32::MAX);
    let height = LATENCY_HEIGHT + 90 + ROW_HEIGHT * rows.min(200);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        draw(&root, data).map_err(|error| DemoError::Chart(error.to_string()))?;
        root.present()
            .map_err(|error| DemoError::Chart(error.to_string()))?;
    }
    Ok(svg)
}

/// Writes the chart of `data` to `path`, creating its directory.
///
/// # Errors
/// [`DemoError::Chart`] if plotters cannot draw it, [`DemoError::Write`] if
/// the file cannot be written.
pub fn write_svg(data: &RunData, path: &Path) -> Result<(), DemoError> {
    let svg = render_svg(data)?;
    let write = || {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, svg)
    };
    write().map_err(|source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    })
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, data: &RunData) -> Drawn {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(LATENCY_HEIGHT);
    let seconds = |d: Duration| d.saturating_sub(data.start).as_secs_f64();
    let end = seconds(data.end).max(0.001);
    draw_latency(&top, data, end, &seconds)?;
    draw_health(&bottom, data, end, &seconds)
}

fn draw_latency(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    data: &RunData,
    end: f64,
    seconds: &dyn Fn(Duration) -> f64,
) -> Drawn {
    let buckets = latency_buckets(data, BUCKETS);
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0).max(0.01);
    let high = buckets.iter().map(|b| ms(b.p99)).fold(1.0, f64::max) * 1.5;
    let low = buckets.iter().map(|b| ms(b.p50)).fold(high, f64::min) / 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("request latency in ms, submit to answer: p50 and p99 per 1/{BUCKETS} of the run (log scale)"),
            (FONT, 17),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..end, (low.min(high / 2.0)..high).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .label_style((FONT, 12))
        .draw()?;
    for (name, color, pick) in [
        ("p50", P50, (|b: &Bucket| b.p50) as fn(&Bucket) -> Duration),
        ("p99", P99, |b: &Bucket| b.p99),
    ] {
        let points = buckets.iter().map(|b| (seconds(b.middle), ms(pick(b))));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()?;
    Ok(())
}

fn draw_health(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    data: &RunData,
    end: f64,
    seconds: &dyn Fn(Duration) -> f64,
) -> Drawn {
    // Worker `index` is the band from `rows - index - 1` to `rows - index`:
    // worker 0 on top, each named left of its band's middle.
    let rows = data.workers.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "worker health: green Healthy, orange Degraded, red Unavailable",
            (FONT, 17),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..end, 0f64..rows)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("seconds")
        .label_style((FONT, 12))
        .draw()?;
    let name_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    let (base_x, base_y) = area.get_base_pixel();
    for (index, worker) in data.workers.iter().enumerate() {
        let top = rows - index as f64;
        let (x, y) = chart.backend_coord(&(0.0, top - 0.5));
        area.draw(&Text::new(
            format!("{} ({})", worker.id, worker.role),
            (x - base_x - 8, y - base_y),
            name_style.clone(),
        ))?;
        let (initial, changes) = data.changes_of(index);
        let bars = spans(initial, &changes, data.start, data.end)
            .into_iter()
            .map(|span| {
                let color = match span.state {
                    WorkerHealthStatus::Healthy => HEALTHY,
                    WorkerHealthStatus::Degraded => DEGRADED,
                    WorkerHealthStatus::Unavailable => UNAVAILABLE,
                };
                Rectangle::new(
                    [
                        (seconds(span.from), top - 0.1),
                        (seconds(span.to), top - 0.9),
                    ],
                    color.filled(),
                )
            });
        chart.draw_series(bars)?;
    }
    Ok(())
}
