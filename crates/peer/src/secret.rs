//! The shared secret: from a file or an environment variable, never from
//! the command line (where `ps` would show it).

use std::path::Path;

/// Shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// Key material shared by the nodes of one deployment.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

/// Why a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read the peer secret file {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("the peer secret variable {0} is not set")]
    Unset(String),
    /// Too short to be a key.
    #[error("the peer secret is {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    TooShort(usize),
}

impl Secret {
    /// A secret from bytes (surrounding whitespace ignored).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Secret, SecretError> {
        let trimmed = bytes.as_ref().trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(trimmed.len()));
        }
        Ok(Secret(trimmed.to_vec()))
    }

    /// Reads the secret from a file.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Secret::new(bytes)
    }

    /// Reads the secret from an environment variable.
    pub fn from_env(var: &str) -> Result<Secret, SecretError> {
        let value = std::env::var(var).map_err(|_| SecretError::Unset(var.to_string()))?;
        Secret::new(value)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `candidate` is this secret, compared in constant time (an
    /// admin token: the time taken must not tell how much of it matched).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_slice().ct_eq(candidate.trim_ascii()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}
