//! Finding and registering the TrueType font the figures are drawn with.
//!
//! plotters' `ab_glyph` feature renders text in pure Rust, but only with
//! fonts registered at run time. We load one from disk (Debian's
//! `fonts-dejavu-core`, which `tools/setup.sh` installs) instead of linking
//! fontconfig/freetype, and fail with a message that says what to install
//! rather than drawing figures without labels.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plotters::style::FontStyle;

/// The family name every text style in the figures uses.
pub const FAMILY: &str = "sans-serif";

/// Environment variable that points at a `.ttf` to use instead of the
/// search list (for machines without DejaVu).
pub const FONT_ENV: &str = "REPLAYMIG_BENCH_FONT";

/// Where a sans-serif TrueType font is looked for, first hit wins: Debian's
/// `fonts-dejavu-core` first, then other common distribution paths.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Why no font could be registered; each variant says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum FontError {
    /// No candidate file exists.
    #[error(
        "no TrueType font found for the figures (tried {tried}); install Debian's \
         fonts-dejavu-core (tools/setup.sh does), or pass --font / set {FONT_ENV} to a .ttf file"
    )]
    NotFound {
        /// The paths tried, comma-separated.
        tried: String,
    },
    /// The chosen file exists but cannot be read.
    #[error("cannot read font {path}: {source}")]
    Unreadable {
        /// The font path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chosen file is not a font ab_glyph can parse.
    #[error("{path} is not a TrueType/OpenType font ab_glyph can read")]
    Invalid {
        /// The font path.
        path: PathBuf,
    },
}

static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Picks the font file: `explicit` (e.g. `--font`), else `$REPLAYMIG_BENCH_FONT`,
/// else the first existing [`FONT_CANDIDATES`] entry. An explicit or
/// environment path that does not exist is an error, not a silent fallback.
pub fn find_font(explicit: Option<&Path>) -> Result<PathBuf, FontError> {
    let chosen = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(FONT_ENV).map(PathBuf::from));
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(FontError::NotFound {
                tried: path.display().to_string(),
            })
        };
    }
    FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| FontError::NotFound {
            tried: FONT_CANDIDATES.join(", "),
        })
}

/// Registers the font found by [`find_font`] as [`FAMILY`] for plotters and
/// returns its path. Registration is process-wide: later calls reuse it
/// unless they ask for a different file. The font bytes are leaked on
/// purpose, since plotters needs them `'static` (one file per process).
pub fn ensure_font(explicit: Option<&Path>) -> Result<PathBuf, FontError> {
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if explicit.is_none() {
        if let Some(path) = registered.as_ref() {
            return Ok(path.clone());
        }
    }
    let path = find_font(explicit)?;
    if registered.as_deref() == Some(path.as_path()) {
        return Ok(path);
    }
    let bytes = std::fs::read(&path).map_err(|source| FontError::Unreadable {
        path: path.clone(),
        source,
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| FontError::Invalid { path: path.clone() })?;
    *registered = Some(path.clone());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_font_is_a_clear_error() {
        let err = find_font(Some(Path::new("/nonexistent/Font.ttf"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/Font.ttf"), "{msg}");
        assert!(msg.contains("fonts-dejavu-core"), "{msg}");
    }

    #[test]
    fn a_file_that_is_not_a_font_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.ttf");
        std::fs::write(&bogus, b"not a font").unwrap();
        let err = ensure_font(Some(&bogus)).unwrap_err();
        assert!(matches!(err, FontError::Invalid { .. }), "{err}");
    }
}
