//! Reading the experiment's CSV: one row per migration run.
//!
//! The parser is strict because the figures and the target checks are only as
//! good as the numbers behind them: every bad row is reported with its line
//! number and column instead of being skipped silently.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// The columns the experiment writes, in its order; all are required (any
/// order, extra columns ignored) so a renamed column fails loudly.
pub const COLUMNS: [&str; 17] = [
    "method",
    "workload",
    "rate_mbit",
    "run",
    "ok",
    "total_s",
    "interruption_s",
    "jitter_s",
    "snapshot_bytes",
    "log_bytes",
    "control_bytes",
    "iterations",
    "dump_s",
    "transfer_s",
    "restore_s",
    "replay_s",
    "handover_s",
];

/// The two migration methods the experiment compares; an enum so a typo in
/// the CSV is an error rather than a third, silently plotted method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Snapshot + journal replay (the product).
    Replay,
    /// Repeated dumps with delta transfer (the paper's baseline).
    Iterative,
}

impl Method {
    /// Both methods in the order figures and tables list them, so every
    /// output agrees on it.
    pub const ALL: [Method; 2] = [Method::Replay, Method::Iterative];

    /// The CSV spelling, also used as the label in figures and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Replay => "replay",
            Method::Iterative => "iterative",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One migration run (one CSV row). Measurements are `Option` because a
/// failed run (`ok=false`) may leave them empty; for `ok=true` rows the parser
/// guarantees every measurement is present.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// 1-based line in the CSV, to point back at the source in messages.
    pub line: u64,
    /// Which migration method ran.
    pub method: Method,
    /// The migrated service (e.g. `redis`, `detector`): one figure panel each.
    pub workload: String,
    /// Link rate the testbed was shaped to, in Mbit/s.
    pub rate_mbit: f64,
    /// Repetition number (the paper repeats each condition three times).
    pub run: u32,
    /// Whether the migration succeeded; failed runs are listed but never
    /// enter a median.
    pub ok: bool,
    /// Trigger to destination serving, seconds.
    pub total_s: Option<f64>,
    /// Time clients could not be served at all, seconds.
    pub interruption_s: Option<f64>,
    /// Time clients were served, but not by the nearest node, seconds.
    pub jitter_s: Option<f64>,
    /// Snapshot / dump bytes sent over the link.
    pub snapshot_bytes: Option<u64>,
    /// Journal (input log) bytes sent over the link.
    pub log_bytes: Option<u64>,
    /// Control-message bytes sent over the link.
    pub control_bytes: Option<u64>,
    /// Pre-copy iterations (0 for replay).
    pub iterations: Option<u32>,
    /// Time spent dumping, seconds.
    pub dump_s: Option<f64>,
    /// Time spent transferring, seconds.
    pub transfer_s: Option<f64>,
    /// Time spent restoring on the destination, seconds.
    pub restore_s: Option<f64>,
    /// Time spent replaying the journal, seconds.
    pub replay_s: Option<f64>,
    /// Time spent handing clients over, seconds.
    pub handover_s: Option<f64>,
}

impl Run {
    /// Everything that crossed the link (snapshot + journal + control); the
    /// quantity that the link-rate bound and the "MB over the link" column use.
    pub fn link_bytes(&self) -> Option<u64> {
        Some(self.snapshot_bytes? + self.log_bytes? + self.control_bytes?)
    }
}

/// Why the CSV could not be read; every row error names its line so the
/// person fixing the experiment output can find it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsvError {
    /// The header row is missing a required column or cannot be read.
    #[error("line 1 (header): {0}")]
    Header(String),
    /// A data row is malformed.
    #[error("line {line}: {message}")]
    Row {
        /// 1-based line number in the file.
        line: u64,
        /// What is wrong with the row.
        message: String,
    },
    /// The file has a header but no runs, so there is nothing to report.
    #[error("no data rows after the header")]
    Empty,
}

impl CsvError {
    /// The offending line, when the error is about one row (tests and callers
    /// use it to point at the source).
    pub fn line(&self) -> Option<u64> {
        match self {
            CsvError::Header(_) => Some(1),
            CsvError::Row { line, .. } => Some(*line),
            CsvError::Empty => None,
        }
    }
}

/// Reads and validates the CSV at `path`; the error names the file as well as
/// the line.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Run>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open CSV {}", path.display()))?;
    parse_csv(file).with_context(|| format!("invalid CSV {}", path.display()))
}

/// Parses and validates CSV text from any reader (the unit tests feed
/// strings); see [`COLUMNS`] for the expected header.
pub fn parse_csv<R: Read>(input: R) -> Result<Vec<Run>, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let header = reader
        .headers()
        .map_err(|e| CsvError::Header(e.to_string()))?
        .clone();
    let mut index = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        index.entry(name.to_string()).or_insert(i);
    }
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !index.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        return Err(CsvError::Header(format!(
            "missing column(s) {}; expected {}",
            missing.join(", "),
            COLUMNS.join(",")
        )));
    }
    let width = header.len();

    let mut runs = Vec::new();
    let mut seen: HashMap<(Method, String, u64, u32), u64> = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| CsvError::Row {
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != width {
            return Err(CsvError::Row {
                line,
                message: format!("has {} fields, the header has {width}", record.len()),
            });
        }
        let row = Row {
            record: &record,
            index: &index,
            line,
        };
        let run = row.parse()?;
        let key = (
            run.method,
            run.workload.clone(),
            run.rate_mbit.to_bits(),
            run.run,
        );
        if let Some(first) = seen.insert(key, line) {
            return Err(CsvError::Row {
                line,
                message: format!(
                    "duplicate of line {first} (same method, workload, rate_mbit and run)"
                ),
            });
        }
        runs.push(run);
    }
    if runs.is_empty() {
        return Err(CsvError::Empty);
    }
    Ok(runs)
}

/// One record with its column index, to give field access with line-numbered
/// errors.
struct Row<'a> {
    record: &'a csv::StringRecord,
    index: &'a HashMap<String, usize>,
    line: u64,
}

impl Row<'_> {
    fn field(&self, column: &str) -> &str {
        // The header check guarantees every column of COLUMNS is indexed, and
        // the width check that the record has that many fields.
        self.index
            .get(column)
            .and_then(|&i| self.record.get(i))
            .unwrap_or("")
    }

    fn err(&self, column: &str, what: impl fmt::Display) -> CsvError {
        CsvError::Row {
            line: self.line,
            message: format!("column {column}: {what}"),
        }
    }

    fn required(&self, column: &str) -> Result<&str, CsvError> {
        match self.field(column) {
            "" => Err(self.err(column, "is empty")),
            v => Ok(v),
        }
    }

    /// A measurement: empty is allowed only for failed runs.
    fn seconds(&self, column: &str, ok: bool) -> Result<Option<f64>, CsvError> {
        let raw = self.field(column);
        if raw.is_empty() {
            return if ok {
                Err(self.err(column, "is empty but ok=true"))
            } else {
                Ok(None)
            };
        }
        let v: f64 = raw
            .parse()
            .map_err(|_| self.err(column, format!("{raw:?} is not a number")))?;
        if !v.is_finite() || v < 0.0 {
            return Err(self.err(column, format!("{raw:?} must be a finite number >= 0")));
        }
        Ok(Some(v))
    }

    fn count<T: std::str::FromStr>(&self, column: &str, ok: bool) -> Result<Option<T>, CsvError> {
        let raw = self.field(column);
        if raw.is_empty() {
            return if ok {
                Err(self.err(column, "is empty but ok=true"))
            } else {
                Ok(None)
            };
        }
        raw.parse()
            .map(Some)
            .map_err(|_| self.err(column, format!("{raw:?} is not a non-negative integer")))
    }

    fn parse(&self) -> Result<Run, CsvError> {
        let method = match self.required("method")? {
            m if m.eq_ignore_ascii_case("replay") => Method::Replay,
            m if m.eq_ignore_ascii_case("iterative") => Method::Iterative,
            m => {
                return Err(self.err(
                    "method",
                    format!("{m:?} is neither \"replay\" nor \"iterative\""),
                ))
            }
        };
        let workload = self.required("workload")?.to_string();
        let raw_rate = self.required("rate_mbit")?;
        let rate_mbit: f64 = raw_rate
            .parse()
            .map_err(|_| self.err("rate_mbit", format!("{raw_rate:?} is not a number")))?;
        if !rate_mbit.is_finite() || rate_mbit <= 0.0 {
            return Err(self.err("rate_mbit", format!("{raw_rate:?} must be > 0")));
        }
        let raw_run = self.required("run")?;
        let run: u32 = raw_run
            .parse()
            .map_err(|_| self.err("run", format!("{raw_run:?} is not a run number")))?;
        let ok = match self.required("ok")? {
            v if v.eq_ignore_ascii_case("true") => true,
            v if v.eq_ignore_ascii_case("false") => false,
            v => return Err(self.err("ok", format!("{v:?} is neither \"true\" nor \"false\""))),
        };
        Ok(Run {
            line: self.line,
            method,
            workload,
            rate_mbit,
            run,
            ok,
            total_s: self.seconds("total_s", ok)?,
            interruption_s: self.seconds("interruption_s", ok)?,
            jitter_s: self.seconds("jitter_s", ok)?,
            snapshot_bytes: self.count("snapshot_bytes", ok)?,
            log_bytes: self.count("log_bytes", ok)?,
            control_bytes: self.count("control_bytes", ok)?,
            iterations: self.count("iterations", ok)?,
            dump_s: self.seconds("dump_s", ok)?,
            transfer_s: self.seconds("transfer_s", ok)?,
            restore_s: self.seconds("restore_s", ok)?,
            replay_s: self.seconds("replay_s", ok)?,
            handover_s: self.seconds("handover_s", ok)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "method,workload,rate_mbit,run,ok,total_s,interruption_s,jitter_s,snapshot_bytes,log_bytes,control_bytes,iterations,dump_s,transfer_s,restore_s,replay_s,handover_s";

    fn csv(rows: &[&str]) -> String {
        let mut s = String::from(HEADER);
        for r in rows {
            s.push('\n');
            s.push_str(r);
        }
        s.push('\n');
        s
    }

    const GOOD: &str =
        "replay,redis,580,1,true,1.5,0.02,1.4,1000000,2000,300,0,0.1,0.9,0.2,0.1,0.01";

    #[test]
    fn parses_a_good_row() {
        let runs = parse_csv(csv(&[GOOD]).as_bytes()).unwrap();
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert_eq!(r.line, 2);
        assert_eq!(r.method, Method::Replay);
        assert_eq!(r.workload, "redis");
        assert_eq!(r.rate_mbit, 580.0);
        assert!(r.ok);
        assert_eq!(r.total_s, Some(1.5));
        assert_eq!(r.link_bytes(), Some(1_002_300));
        assert_eq!(r.iterations, Some(0));
    }

    #[test]
    fn columns_may_come_in_any_order_and_extras_are_ignored() {
        let mut cols: Vec<&str> = HEADER.split(',').collect();
        let mut vals: Vec<&str> = GOOD.split(',').collect();
        cols.reverse();
        vals.reverse();
        let text = format!("{},note\n{},hello\n", cols.join(","), vals.join(","));
        let runs = parse_csv(text.as_bytes()).unwrap();
        assert_eq!(runs[0].total_s, Some(1.5));
        assert_eq!(runs[0].method, Method::Replay);
    }

    #[test]
    fn failed_runs_may_leave_measurements_empty() {
        let runs =
            parse_csv(csv(&[GOOD, "iterative,redis,580,1,false,,,,,,,,,,,,"]).as_bytes()).unwrap();
        assert!(!runs[1].ok);
        assert_eq!(runs[1].total_s, None);
        assert_eq!(runs[1].link_bytes(), None);
    }

    #[test]
    fn bad_number_names_line_and_column() {
        let bad = "iterative,redis,100,1,true,abc,0.5,1,1,1,1,3,1,1,1,0,0";
        let err = parse_csv(csv(&[GOOD, bad]).as_bytes()).unwrap_err();
        assert_eq!(err.line(), Some(3));
        let msg = err.to_string();
        assert!(msg.starts_with("line 3: column total_s"), "{msg}");
        assert!(msg.contains("\"abc\""), "{msg}");
    }

    #[test]
    fn bad_method_ok_and_rate_are_errors() {
        for (row, column) in [
            ("migrate,redis,580,1,true,1,0,1,1,1,1,0,0,0,0,0,0", "method"),
            ("replay,redis,580,1,yes,1,0,1,1,1,1,0,0,0,0,0,0", "ok"),
            ("replay,redis,0,1,true,1,0,1,1,1,1,0,0,0,0,0,0", "rate_mbit"),
            (
                "replay,redis,580,1,true,-1,0,1,1,1,1,0,0,0,0,0,0",
                "total_s",
            ),
            (
                "replay,redis,580,1,true,1,0,1,1.5,1,1,0,0,0,0,0,0",
                "snapshot_bytes",
            ),
            (
                "replay,redis,580,1,true,1,0,1,1,1,1,0,0,,0,0,0",
                "transfer_s",
            ),
        ] {
            let err = parse_csv(csv(&[row]).as_bytes()).unwrap_err();
            assert_eq!(err.line(), Some(2), "{row}");
            assert!(
                err.to_string().contains(&format!("column {column}")),
                "{row}: {err}"
            );
        }
    }

    #[test]
    fn wrong_field_count_is_an_error() {
        let second = GOOD.replace(",580,1,", ",580,2,");
        let err = parse_csv(csv(&[GOOD, &second, "replay,redis,580"]).as_bytes()).unwrap_err();
        assert_eq!(
            err,
            CsvError::Row {
                line: 4,
                message: "has 3 fields, the header has 17".into()
            }
        );
    }

    #[test]
    fn duplicate_run_is_an_error() {
        let err = parse_csv(csv(&[GOOD, GOOD]).as_bytes()).unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(err.to_string().contains("duplicate of line 2"), "{err}");
    }

    #[test]
    fn missing_column_and_empty_file() {
        let err = parse_csv("method,workload\nreplay,redis\n".as_bytes()).unwrap_err();
        assert!(matches!(err, CsvError::Header(_)));
        assert!(err.to_string().contains("rate_mbit"), "{err}");
        assert_eq!(parse_csv(csv(&[]).as_bytes()), Err(CsvError::Empty));
    }

    #[test]
    fn read_csv_names_the_file() {
        let err = read_csv(Path::new("/nonexistent/results.csv")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/results.csv"));
    }
}
