//! `replaymig-bench-report --csv results.csv --out docs/results/`: draws the
//! paper's Figs. 3–6 and writes results.md from the migration experiment's
//! CSV. All logic lives in the `replaymig_bench` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "replaymig-bench-report",
    version,
    about = "Turn the migration experiment's CSV into Figs. 3-6 (PNG) and results.md"
)]
struct Args {
    /// The experiment's CSV (one row per migration run).
    #[arg(long, value_name = "FILE")]
    csv: PathBuf,
    /// Directory for the figures and results.md (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// TrueType font for the figures [default: $REPLAYMIG_BENCH_FONT, else
    /// DejaVuSans from Debian's fonts-dejavu-core].
    #[arg(long, value_name = "TTF")]
    font: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match replaymig_bench::generate(&args.csv, &args.out, args.font.as_deref()) {
        Ok(g) => {
            for f in &g.figures {
                println!("wrote {}", f.display());
            }
            println!("wrote {}", g.markdown.display());
            print!("{}", g.link_table);
            println!("targets: {}", replaymig_bench::report::tally(&g.checks));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replaymig-bench-report: {e:#}");
            ExitCode::FAILURE
        }
    }
}
