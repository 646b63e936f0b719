//! The engine's error type. Each variant maps to one `rg_status` of the C ABI.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// A caller passed something invalid (bad flag value, token id out of range, ...).
    InvalidArgument(String),
    /// A file could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is malformed (GGUF, safetensors, config.json, ...).
    Format(String),
    /// A valid input that rgemma does not handle (unknown tensor type, architecture, ...).
    Unsupported(String),
    /// The tokenizer failed or is missing.
    Tokenizer(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format(m) => write!(f, "{m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Tokenizer(m) => write!(f, "tokenizer: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<rgemma_quant::QuantError> for Error {
    fn from(e: rgemma_quant::QuantError) -> Self {
        match e {
            rgemma_quant::QuantError::Unsupported(_) => Error::Unsupported(e.to_string()),
            _ => Error::Format(e.to_string()),
        }
    }
}
