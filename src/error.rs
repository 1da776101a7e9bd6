//! The library's error type: every way user input or model files can be wrong.

use std::path::PathBuf;

/// Everything that can go wrong in the library, each with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),

    /// A file operation failed. `path` is the one the user knows (the destination of a
    /// write, never its temporary file) and `op` says what was being done.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: IoOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },

    #[error("model: {0}")]
    Model(String),

    #[error("device: {0}")]
    Device(String),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a failed file operation was doing, worded to follow "cannot".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    CreateFolder,
    ListFolder,
    Remove,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::CreateFolder => "create the folder",
            IoOp::ListFolder => "list the folder",
            IoOp::Remove => "remove",
        })
    }
}

impl Error {
    /// Reading `path` failed.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::io_op(IoOp::Read, path, source)
    }

    /// Writing `path` failed (name the destination, not a temporary file).
    pub fn io_write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::io_op(IoOp::Write, path, source)
    }

    /// Any other file operation on `path` failed.
    pub fn io_op(op: IoOp, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }

    pub fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }
}
