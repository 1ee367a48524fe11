//! End to end: the library turns a small CSV (both methods, two rates, two
//! runs each, one failed run) into four valid PNGs and a results.md with the
//! table rows and the targets section.

use std::path::Path;

use replaymig_bench::plot::FIGURES;
use replaymig_bench::{generate, Outcome, RESULTS_MD};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two_rates.csv")
}

#[test]
fn fixture_csv_becomes_figures_and_markdown() {
    let out = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: generate creates it.
    let out_dir = out.path().join("docs/results");
    let g = generate(&fixture(), &out_dir, None).unwrap();

    assert_eq!(g.figures.len(), FIGURES.len());
    for name in FIGURES {
        let path = out_dir.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{name} is not a PNG");
        // IHDR must follow the signature; width 1100, height > 400.
        assert_eq!(&bytes[12..16], b"IHDR", "{name}");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert!(width >= 800 && height >= 400, "{name}: {width}x{height}");
        // A blank white canvas compresses to a few KB; lines, bars and text do not.
        assert!(bytes.len() > 15_000, "{name}: only {} bytes", bytes.len());
    }

    let md = std::fs::read_to_string(out_dir.join(RESULTS_MD)).unwrap();
    for row in [
        "| redis | replay | 100 | 2/2 | 2.020 | 35.0 | 1.985 | 20.562 | 0.0 |",
        "| redis | iterative | 100 | 2/2 | 6.600 | 900.0 | 5.700 | 62.509 | 3.5 |",
        "| redis | replay | 10 | 1/2 | 19.000 | 62.0 | 18.938 | 22.012 | 0.0 |",
        "| redis | iterative | 10 | 2/2 | 60.000 | 8250.0 | 51.750 | 65.509 | 4.5 |",
        "| redis | 100 | 0.306 | 0.0389 |",
        "| redis | 10 | 0.317 | 0.0075 |",
        "## Targets",
        "| redis | 10 | replay interruption ≤ 50 ms | replay 62.0 ms vs 50.0 ms | **missed** |",
        "| 7 | redis | replay | 10 | 2 | **no** | 30.000 | – |",
    ] {
        assert!(md.contains(row), "results.md lacks {row:?}:\n{md}");
    }
    let met = g
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Met)
        .count();
    let missed = g
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Missed)
        .count();
    assert_eq!((met, missed, g.checks.len()), (5, 1, 6));
}

#[test]
fn bad_csv_fails_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    let text = std::fs::read_to_string(fixture())
        .unwrap()
        .replace("6.8,0.95", "6.8,oops");
    std::fs::write(&csv, text).unwrap();
    let out_dir = dir.path().join("out");
    let err = generate(&csv, &out_dir, None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("bad.csv") && msg.contains("line 5: column interruption_s"),
        "{msg}"
    );
    assert!(!out_dir.exists());
}

#[test]
fn missing_font_is_reported_not_drawn_around() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(
        &fixture(),
        &dir.path().join("out"),
        Some(Path::new("/no/such/font.ttf")),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("/no/such/font.ttf") && msg.contains("fonts-dejavu-core"),
        "{msg}"
    );
}
