//! The paper's Figs. 3–6 as PNG files, one panel per workload.
//!
//! Rates are categorical on the x axis in the experiment's order (like the
//! paper's figures), so 580 and 10 Mbit/s are equally readable. Both axes are
//! plain `f64` coordinates with explicit tick positions; the log axis of
//! Fig. 4 is drawn as log10 values with labels in seconds, which keeps one
//! chart type for every figure.

use std::error::Error;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::Method;
use crate::font::FAMILY;
use crate::stats::{fmt_rate, Field, Spread, Summary, INTERRUPTION_MAX_S};

/// Fig. 3 file name: total migration time vs rate.
pub const FIG3: &str = "fig3_total_time.png";
/// Fig. 4 file name: interruption vs rate.
pub const FIG4: &str = "fig4_interruption.png";
/// Fig. 5 file name: phase shares of the total.
pub const FIG5: &str = "fig5_phases.png";
/// Fig. 6 file name: interruption and jitter shares of the total.
pub const FIG6: &str = "fig6_interruption_jitter_share.png";
/// Every figure this module writes, in order (tests check each).
pub const FIGURES: [&str; 4] = [FIG3, FIG4, FIG5, FIG6];

type DynResult<T = ()> = Result<T, Box<dyn Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// Draws one workload's panel: chart area, legend column, data, workload.
type Panel = fn(&Area, &Area, &Summary, &str) -> DynResult;

const WIDTH: u32 = 1150;
/// Width of the legend column right of each panel, so the legend never
/// covers data.
const LEGEND_W: u32 = 170;
const PANEL_H: u32 = 430;
const TITLE_H: u32 = 50;

const REPLAY_COLOR: RGBColor = RGBColor(31, 119, 180);
const ITERATIVE_COLOR: RGBColor = RGBColor(255, 127, 14);

const PHASE_COLORS: [(&str, RGBColor); 6] = [
    ("dump", RGBColor(148, 103, 189)),
    ("transfer", RGBColor(31, 119, 180)),
    ("restore", RGBColor(44, 160, 44)),
    ("replay", RGBColor(214, 39, 40)),
    ("handover", RGBColor(140, 86, 75)),
    ("other", RGBColor(199, 199, 199)),
];
const SHARE_COLORS: [(&str, RGBColor); 2] = [
    ("interruption", RGBColor(214, 39, 40)),
    ("jitter", RGBColor(255, 187, 120)),
];

fn method_color(m: Method) -> RGBColor {
    match m {
        Method::Replay => REPLAY_COLOR,
        Method::Iterative => ITERATIVE_COLOR,
    }
}

/// Renders all four figures into `out_dir` (which must exist) and returns
/// their paths. The font must already be registered
/// ([`crate::font::ensure_font`]).
pub fn render_figures(summary: &Summary, out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let jobs: [(&str, &str, Panel); 4] = [
        (
            FIG3,
            "Fig. 3 — Total migration time (median of ok runs; bars: min–max)",
            |a, l, s, w| {
                line_panel(
                    (a, l),
                    s,
                    w,
                    |g| g.total_s,
                    Scale::Linear,
                    "total migration time (s)",
                    None,
                )
            },
        ),
        (
            FIG4,
            "Fig. 4 — Interruption time (median of ok runs; bars: min–max)",
            |a, l, s, w| {
                line_panel(
                    (a, l),
                    s,
                    w,
                    |g| g.interruption_s,
                    Scale::Log,
                    "interruption (s, log scale)",
                    Some((INTERRUPTION_MAX_S, "replay target 50 ms")),
                )
            },
        ),
        (
            FIG5,
            "Fig. 5 — Share of each phase in the total (median phase ÷ median total)",
            phase_panel,
        ),
        (
            FIG6,
            "Fig. 6 — Interruption and jitter as shares of the total (medians)",
            share_panel,
        ),
    ];
    let mut written = Vec::new();
    for (file, title, panel) in jobs {
        let path = out_dir.join(file);
        draw_png(&path, title, summary, panel)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("drawing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn draw_png(path: &Path, title: &str, summary: &Summary, panel: Panel) -> DynResult {
    let n = summary.workloads.len().max(1);
    let height = TITLE_H + PANEL_H * n as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(title, (FAMILY, 24))?;
    for (area, workload) in body.split_evenly((n, 1)).iter().zip(&summary.workloads) {
        let (chart, legend) = area.split_horizontally(WIDTH - LEGEND_W);
        panel(&chart, &legend, summary, workload)?;
    }
    root.present()?;
    Ok(())
}

/// How values map onto the y axis.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    Log,
}

/// A y axis: range and ticks in plot coordinates, and how to label them.
struct YAxis {
    scale: Scale,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn new(scale: Scale, values: &[f64]) -> YAxis {
        let max = values.iter().copied().fold(0.0_f64, f64::max);
        match scale {
            Scale::Linear => {
                let hi = if max > 0.0 { max * 1.12 } else { 1.0 };
                let step = nice_step(hi / 8.0);
                let ticks = (0..)
                    .map(|i| f64::from(i) * step)
                    .take_while(|t| *t <= hi)
                    .collect();
                YAxis {
                    scale,
                    lo: 0.0,
                    hi,
                    ticks,
                }
            }
            Scale::Log => {
                let min_pos = values
                    .iter()
                    .copied()
                    .filter(|v| *v > 0.0)
                    .fold(f64::INFINITY, f64::min);
                let (lo, mut hi) = if min_pos.is_finite() {
                    (min_pos.log10().floor(), max.log10().ceil())
                } else {
                    (-3.0, 0.0)
                };
                if hi <= lo {
                    hi = lo + 1.0;
                }
                let decades = (hi - lo) as i32;
                let mult: &[f64] = if decades <= 3 {
                    &[1.0, 2.0, 5.0]
                } else {
                    &[1.0]
                };
                let mut ticks = Vec::new();
                for k in lo as i32..=hi as i32 {
                    for m in mult {
                        let t = (m * 10f64.powi(k)).log10();
                        if t >= lo - 1e-9 && t <= hi + 1e-9 {
                            ticks.push(t);
                        }
                    }
                }
                YAxis {
                    scale,
                    lo,
                    hi,
                    ticks,
                }
            }
        }
    }

    /// Data value → plot coordinate (log axes clamp non-positive values to
    /// the bottom of the axis).
    fn map(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Linear => v,
            Scale::Log if v > 0.0 => v.log10().max(self.lo),
            Scale::Log => self.lo,
        }
    }

    fn label(&self, t: f64) -> String {
        match self.scale {
            Scale::Linear => trim_number(t),
            Scale::Log => {
                let v = 10f64.powf(t);
                let decimals = (-t.floor()).max(0.0) as usize;
                format!("{v:.decimals$}")
            }
        }
    }
}

/// A linear `f64` axis with exactly the tick positions we give it.
/// (plotters' `with_key_points` on `f64` loses the default label formatter,
/// which `configure_mesh` needs even when a custom formatter is set.)
#[derive(Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        if span <= 0.0 {
            return (limit.0 + limit.1) / 2;
        }
        let frac = ((v - self.lo) / span).clamp(-1.0, 2.0);
        limit.0 + ((limit.1 - limit.0) as f64 * frac).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// 1, 2 or 5 × 10^k, the smallest at least `raw`: readable tick steps.
fn nice_step(raw: f64) -> f64 {
    let raw = if raw > 0.0 { raw } else { 1.0 };
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw - 1e-12)
        .unwrap_or(10.0 * p)
}

fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// The rate at categorical x position `v`, or nothing between categories.
fn rate_label(rates: &[f64], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    rates
        .get(i as usize)
        .map(|r| fmt_rate(*r))
        .unwrap_or_default()
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Swatch {
    Line(RGBColor),
    Dashed(RGBColor),
    Fill(RGBColor),
    Outline(RGBColor),
}

/// A legend in the column right of the chart: one swatch and label a line.
fn draw_legend(area: &Area, entries: &[(String, Swatch)]) -> DynResult {
    let style = TextStyle::from((FAMILY, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, swatch)) in entries.iter().enumerate() {
        let y = 70 + 24 * i as i32;
        let (x0, x1) = (6, 30);
        match *swatch {
            Swatch::Line(c) => {
                area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(3)))?;
                area.draw(&Circle::new((18, y), 4, c.filled()))?;
            }
            Swatch::Dashed(c) => {
                for x in (x0..x1).step_by(8) {
                    area.draw(&PathElement::new(
                        vec![(x, y), ((x + 4).min(x1), y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Swatch::Fill(c) => {
                area.draw(&Rectangle::new([(x0, y - 7), (x1, y + 7)], c.filled()))?
            }
            Swatch::Outline(c) => area.draw(&Rectangle::new(
                [(x0, y - 7), (x1, y + 7)],
                c.stroke_width(2),
            ))?,
        }
        area.draw(&Text::new(label.clone(), (x1 + 8, y), style.clone()))?;
    }
    Ok(())
}

const TARGET_COLOR: RGBColor = RGBColor(110, 110, 110);

/// Fig. 3/4 panel: one line per method, median points, min–max error bars.
fn line_panel(
    (area, legend): (&Area, &Area),
    summary: &Summary,
    workload: &str,
    value: Field,
    scale: Scale,
    y_desc: &str,
    reference: Option<(f64, &str)>,
) -> DynResult {
    let rates = summary.rates_of(workload);
    let n = rates.len();
    let mut all = Vec::new();
    let series: Vec<(Method, Vec<Option<Spread>>)> = Method::ALL
        .iter()
        .map(|&m| {
            let pts: Vec<Option<Spread>> = rates
                .iter()
                .map(|&r| summary.group(workload, m, r).and_then(value))
                .collect();
            all.extend(pts.iter().flatten().flat_map(|s| [s.min, s.max]));
            (m, pts)
        })
        .collect();
    if let Some((v, _)) = reference {
        all.push(v);
    }
    let y = YAxis::new(scale, &all);
    let x_keys: Vec<f64> = (0..n).map(|i| i as f64).collect();

    let mut chart = ChartBuilder::on(area)
        .caption(format!("workload: {workload}"), (FAMILY, 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            Ticked {
                lo: -0.5,
                hi: n as f64 - 0.5,
                ticks: x_keys,
            },
            Ticked {
                lo: y.lo,
                hi: y.hi,
                ticks: y.ticks.clone(),
            },
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("link rate (Mbit/s)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| rate_label(&rates, *v))
        .y_label_formatter(&|v| y.label(*v))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    for (k, (method, pts)) in series.iter().enumerate() {
        let color = method_color(*method);
        let dx = if k == 0 { -0.04 } else { 0.04 };
        let at = |i: usize| i as f64 + dx;
        // Line segments between consecutive conditions that have data.
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (i, p) in pts.iter().enumerate() {
            match p {
                Some(s) => segments
                    .last_mut()
                    .map(|seg| seg.push((at(i), y.map(s.median))))
                    .unwrap_or_default(),
                None => segments.push(Vec::new()),
            }
        }
        for seg in segments.into_iter().filter(|s| !s.is_empty()) {
            chart.draw_series(LineSeries::new(seg, color.stroke_width(2)))?;
        }
        chart.draw_series(pts.iter().enumerate().filter_map(|(i, p)| {
            p.map(|s| {
                ErrorBar::new_vertical(
                    at(i),
                    y.map(s.min),
                    y.map(s.median),
                    y.map(s.max),
                    color.stroke_width(2),
                    10,
                )
            })
        }))?;
        chart.draw_series(pts.iter().enumerate().filter_map(|(i, p)| {
            p.map(|s| Circle::new((at(i), y.map(s.median)), 4, color.filled()))
        }))?;
    }
    let mut entries: Vec<(String, Swatch)> = Method::ALL
        .iter()
        .map(|m| (m.as_str().to_string(), Swatch::Line(method_color(*m))))
        .collect();
    if let Some((v, label)) = reference {
        chart.draw_series(DashedLineSeries::new(
            vec![(-0.5, y.map(v)), (n as f64 - 0.5, y.map(v))],
            6,
            5,
            TARGET_COLOR.stroke_width(2),
        ))?;
        entries.push((label.to_string(), Swatch::Dashed(TARGET_COLOR)));
    }
    draw_legend(legend, &entries)
}

/// One stacked bar of Figs. 5/6.
struct Bar {
    x: f64,
    method: Method,
    /// `(segment index into the palette, share 0..1)`, bottom first; `None`
    /// when the condition has no ok run.
    segments: Option<Vec<(usize, f64)>>,
    /// Extra line printed above the bar (Fig. 6: the interruption share).
    note: Option<String>,
}

const BAR_HALF: f64 = 0.18;

fn bar_x(rate_index: usize, method: Method) -> f64 {
    match method {
        Method::Replay => rate_index as f64 - 0.2,
        Method::Iterative => rate_index as f64 + 0.2,
    }
}

/// Fig. 5 panel: phase shares, one stacked bar per method per rate.
fn phase_panel(area: &Area, legend: &Area, summary: &Summary, workload: &str) -> DynResult {
    let rates = summary.rates_of(workload);
    let mut bars = Vec::new();
    for (i, &r) in rates.iter().enumerate() {
        for m in Method::ALL {
            let Some(g) = summary.group(workload, m, r) else {
                continue;
            };
            let segments = g.phase_shares().map(|shares| {
                shares
                    .iter()
                    .map(|(name, v)| {
                        let idx = PHASE_COLORS
                            .iter()
                            .position(|(n, _)| n == name)
                            .unwrap_or(PHASE_COLORS.len() - 1);
                        (idx, *v)
                    })
                    .collect()
            });
            bars.push(Bar {
                x: bar_x(i, m),
                method: m,
                segments,
                note: None,
            });
        }
    }
    bar_panel(
        (area, legend),
        workload,
        &rates,
        &bars,
        &PHASE_COLORS,
        "share of total time (%)",
    )
}

/// Fig. 6 panel: interruption and jitter shares, one stacked bar per method
/// per rate, with the interruption share printed (it is often too thin to
/// see).
fn share_panel(area: &Area, legend: &Area, summary: &Summary, workload: &str) -> DynResult {
    let rates = summary.rates_of(workload);
    let mut bars = Vec::new();
    for (i, &r) in rates.iter().enumerate() {
        for m in Method::ALL {
            let Some(g) = summary.group(workload, m, r) else {
                continue;
            };
            let shares = g.interruption_jitter_shares();
            bars.push(Bar {
                x: bar_x(i, m),
                method: m,
                segments: shares.map(|(int, jit)| vec![(0, int), (1, jit)]),
                note: shares.map(|(int, _)| format!("int. {}%", trim_pct(int * 100.0))),
            });
        }
    }
    bar_panel(
        (area, legend),
        workload,
        &rates,
        &bars,
        &SHARE_COLORS,
        "share of total time (%)",
    )
}

fn trim_pct(p: f64) -> String {
    if p >= 10.0 {
        format!("{p:.0}")
    } else if p >= 1.0 {
        format!("{p:.1}")
    } else {
        format!("{p:.2}")
    }
}

fn bar_panel(
    (area, legend): (&Area, &Area),
    workload: &str,
    rates: &[f64],
    bars: &[Bar],
    palette: &[(&str, RGBColor)],
    y_desc: &str,
) -> DynResult {
    let n = rates.len();
    let tallest = bars
        .iter()
        .filter_map(|b| b.segments.as_ref())
        .map(|s| s.iter().map(|(_, v)| v * 100.0).sum::<f64>())
        .fold(100.0_f64, f64::max);
    // Head room for the method names (and notes) above the bars.
    let y_hi = tallest * 1.22;
    let step = nice_step(y_hi / 8.0);
    let y_ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|t| *t <= y_hi)
        .collect();
    let x_keys: Vec<f64> = (0..n).map(|i| i as f64).collect();

    let mut chart = ChartBuilder::on(area)
        .caption(format!("workload: {workload}"), (FAMILY, 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            Ticked {
                lo: -0.5,
                hi: n as f64 - 0.5,
                ticks: x_keys,
            },
            Ticked {
                lo: 0.0,
                hi: y_hi,
                ticks: y_ticks,
            },
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("link rate (Mbit/s)")
        .y_desc(y_desc)
        .x_label_formatter(&|v| rate_label(rates, *v))
        .y_label_formatter(&|v| trim_number(*v))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    let mut rects = Vec::new();
    let mut texts = Vec::new();
    let label_style = TextStyle::from((FAMILY, 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for bar in bars {
        let name = match bar.method {
            Method::Replay => "replay",
            Method::Iterative => "iter.",
        };
        match &bar.segments {
            Some(segments) => {
                let mut base = 0.0;
                for &(idx, share) in segments {
                    let top = base + share * 100.0;
                    if share > 0.0 {
                        let color = palette[idx.min(palette.len() - 1)].1;
                        rects.push(Rectangle::new(
                            [(bar.x - BAR_HALF, base), (bar.x + BAR_HALF, top)],
                            color.filled(),
                        ));
                    }
                    base = top;
                }
                rects.push(Rectangle::new(
                    [(bar.x - BAR_HALF, 0.0), (bar.x + BAR_HALF, base)],
                    method_color(bar.method).stroke_width(2),
                ));
                let gap = y_hi * 0.01;
                match &bar.note {
                    Some(note) => {
                        texts.push(Text::new(
                            note.clone(),
                            (bar.x, base + gap),
                            label_style.clone(),
                        ));
                        texts.push(Text::new(
                            name.to_string(),
                            (bar.x, base + gap + y_hi * 0.065),
                            label_style.clone(),
                        ));
                    }
                    None => texts.push(Text::new(
                        name.to_string(),
                        (bar.x, base + gap),
                        label_style.clone(),
                    )),
                }
            }
            None => texts.push(Text::new(
                format!("{name}: no ok run"),
                (bar.x, y_hi * 0.02),
                label_style.clone(),
            )),
        }
    }
    chart.draw_series(rects)?;
    chart.draw_series(texts)?;
    chart.draw_series(LineSeries::new(
        vec![(-0.5, 100.0), (n as f64 - 0.5, 100.0)],
        BLACK.mix(0.6).stroke_width(1),
    ))?;
    // Top segment first, so the legend reads in the order the bars stack.
    let mut entries: Vec<(String, Swatch)> = palette
        .iter()
        .rev()
        .map(|(name, c)| (name.to_string(), Swatch::Fill(*c)))
        .collect();
    entries.push((String::new(), Swatch::Fill(WHITE)));
    entries.push(("replay (left)".into(), Swatch::Outline(REPLAY_COLOR)));
    entries.push(("iterative (right)".into(), Swatch::Outline(ITERATIVE_COLOR)));
    draw_legend(legend, &entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_and_labels() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(0.03), 0.05);
        let y = YAxis::new(Scale::Log, &[0.004, 12.0]);
        assert_eq!((y.lo, y.hi), (-3.0, 2.0));
        assert_eq!(y.label(-2.0), "0.01");
        assert_eq!(y.label(1.0), "10");
        assert_eq!(y.map(0.0), -3.0);
        assert_eq!(rate_label(&[580.0, 10.0], 1.0), "10");
        assert_eq!(rate_label(&[580.0, 10.0], 0.5), "");
        assert_eq!(trim_number(2.50), "2.5");
    }
}
