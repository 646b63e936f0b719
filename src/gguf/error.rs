use std::fmt;

/// A GGUF parse or write failure. Parse errors name the byte offset where the problem is.
#[derive(Debug)]
pub enum GgufError {
    /// Malformed content at byte `offset` of the file.
    Malformed { offset: u64, what: String },
    /// A metadata key is missing.
    MissingKey(String),
    /// A metadata key has another type than the caller asked for.
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
    /// A tensor is missing.
    MissingTensor(String),
    /// An I/O failure (open, mmap, write, fsync, rename).
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Writer misuse or an unwritable request (wrong byte count, name too long, ...).
    Write(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufError::Malformed { offset, what } => write!(f, "at byte {offset}: {what}"),
            GgufError::MissingKey(k) => write!(f, "missing metadata key {k}"),
            GgufError::WrongType {
                key,
                expected,
                found,
            } => {
                write!(f, "key {key}: expected {expected}, found {found}")
            }
            GgufError::MissingTensor(n) => write!(f, "missing tensor {n}"),
            GgufError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            GgufError::Write(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for GgufError {}

impl From<GgufError> for crate::Error {
    fn from(e: GgufError) -> Self {
        match e {
            GgufError::Io { path, source } => crate::Error::Io { path, source },
            other => crate::Error::Format(other.to_string()),
        }
    }
}
