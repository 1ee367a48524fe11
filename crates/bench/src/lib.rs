//! Turns the migration experiment's CSV (one row per run of `replay` or
//! `iterative` migration at a given link rate) into the paper's Figs. 3–6 and
//! a Markdown results table with the project's target checks.
//!
//! It is a library so the parsing, statistics and checks are unit-tested and
//! the binary `replaymig-bench-report` stays a thin argument parser.

#![warn(missing_docs)]

pub mod data;
pub mod font;
pub mod plot;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use data::{parse_csv, read_csv, CsvError, Method, Run};
pub use stats::{check_targets, Check, Outcome, Summary, Target};

/// The Markdown file written next to the figures.
pub const RESULTS_MD: &str = "results.md";

/// What [`generate`] wrote, so the binary (and tests) can report it.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The four PNG figures, in figure order.
    pub figures: Vec<PathBuf>,
    /// The Markdown report.
    pub markdown: PathBuf,
    /// The font the figures were drawn with.
    pub font: PathBuf,
    /// Every target check, as written in the report.
    pub checks: Vec<Check>,
    /// P3 per workload, rate and method (`report::link_table`).
    pub link_table: String,
}

/// Reads `csv`, writes the figures and `results.md` into `out_dir` (created
/// if missing). `font` overrides the font search (see [`font::find_font`]).
/// The font is resolved before anything is written, so a missing font never
/// leaves a half-written output directory.
pub fn generate(csv: &Path, out_dir: &Path, font: Option<&Path>) -> anyhow::Result<Generated> {
    let runs = read_csv(csv)?;
    let font = font::ensure_font(font)?;
    let summary = Summary::from_runs(&runs);
    let checks = check_targets(&summary);
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let figures = plot::render_figures(&summary, out_dir)?;
    let source = csv.file_name().map_or_else(
        || csv.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let md = report::render_markdown(&source, &runs, &summary, &checks);
    let markdown = out_dir.join(RESULTS_MD);
    std::fs::write(&markdown, md)
        .with_context(|| format!("cannot write {}", markdown.display()))?;
    Ok(Generated {
        figures,
        markdown,
        font,
        checks,
        link_table: report::link_table(&summary),
    })
}
