//! The library's error type: every way user input or model files can be wrong, sorted into
//! [`ErrorKind`]s so that the command line's exit codes and a server's HTTP statuses can be
//! chosen without reading messages.

use std::cell::Cell;
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

    /// Finding or downloading a model on the Hugging Face hub.
    #[error("hub: {0}")]
    Hub(String),

    #[error("device: {0}")]
    Device(String),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// libtorch failed inside a computation: out of memory, or shapes it cannot handle.
    #[error("{0}")]
    Compute(String),

    /// The caller's progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
}

/// What kind of failure an [`Error`] is, for exit codes and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or the command line asks for something impossible or unknown.
    Request,
    /// The model's files are missing, damaged or describe something sdgen cannot run.
    Model,
    /// The hub could not be reached or refused.
    Hub,
    /// Reading or writing a file failed.
    Io,
    /// The device is unavailable.
    Device,
    /// Memory ran out during a computation.
    OutOfMemory,
    /// libtorch failed in another way.
    Compute,
    Cancelled,
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

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) => ErrorKind::Request,
            Error::Io { .. } => ErrorKind::Io,
            Error::Config { .. } | Error::Weights { .. } | Error::Model(_) => ErrorKind::Model,
            Error::Hub(_) => ErrorKind::Hub,
            Error::Device(_) => ErrorKind::Device,
            Error::Torch(e) if is_out_of_memory(&e.to_string()) => ErrorKind::OutOfMemory,
            Error::Compute(m) if is_out_of_memory(m) => ErrorKind::OutOfMemory,
            Error::Torch(_) | Error::Compute(_) => ErrorKind::Compute,
            Error::Cancelled => ErrorKind::Cancelled,
        }
    }
}

fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("can't allocate memory") || m.contains("cannot allocate memory")
}

thread_local! {
    /// How many [`catch_torch`] calls this thread is inside.
    static GUARDED: Cell<usize> = const { Cell::new(0) };
}

/// Whether a panic with this message, on this thread, becomes an error in [`catch_torch`]: a
/// panic hook can stay quiet about those.
pub fn panic_is_caught(message: &str) -> bool {
    GUARDED.with(|g| g.get() > 0) && message.contains("Torch(")
}

/// Runs `f`, turning a libtorch failure into an `Err`. tch's tensor operations panic when
/// libtorch throws (out of memory, impossible shapes); a run must fail with a message instead,
/// so that a batch goes on with its next line and a server keeps serving.
pub(crate) fn catch_torch<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let raw = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            // tch's panics carry a `TchError`; any other panic is a bug in sdgen, which must
            // surface as one (with its location), not pass for a libtorch failure.
            if !raw.contains("Torch(") {
                std::panic::resume_unwind(payload);
            }
            Err(compute_error(what, raw))
        }
    }
}

/// A readable message from a tch panic: the libtorch text without tch's wrapping and
/// libtorch's C++ backtrace, and advice when memory ran out.
fn compute_error(what: &str, raw: &str) -> Error {
    let mut text = raw;
    for wrapper in ["called `Result::unwrap()` on an `Err` value: ", "Torch(\"", "Torch("] {
        text = text.strip_prefix(wrapper).unwrap_or(text);
    }
    // libtorch appends where it threw and a C++ backtrace: neither helps a user.
    let text =
        ["Exception raised from", "frame #0", "\\n"].iter().fold(text, |t, cut| t.split(cut).next().unwrap_or(t));
    let text = text.split(" (Cannot allocate memory)").next().unwrap_or(text);
    let text = text.trim_end_matches(['"', ')', ' ', '\n', '.']).replace("\\\"", "\"");
    let text = text.trim();
    if is_out_of_memory(text) {
        Error::Compute(format!(
            "{what}: out of memory ({text}); use a smaller size or fewer images at once, or --offload / \
             --vae-tiling on a GPU"
        ))
    } else {
        Error::Compute(format!("{what} failed in libtorch: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_inside_become_errors_with_the_libtorch_text() {
        let e = catch_torch("the UNet", || -> Result<()> {
            panic!("called `Result::unwrap()` on an `Err` value: Torch(\"DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes.\\nException raised from x at y\\nframe #0\")")
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfMemory);
        let m = e.to_string();
        assert!(m.starts_with("the UNet: out of memory (DefaultCPUAllocator: can't allocate memory"), "{m}");
        assert!(!m.contains("Exception raised") && !m.contains("frame #0"), "{m}");
        assert!(!panic_is_caught("Torch(\"x\")"));
        let bug = std::panic::catch_unwind(|| catch_torch("x", || -> Result<()> { panic!("index out of bounds") }));
        assert!(bug.is_err(), "a panic that is not libtorch's is not turned into an error");
    }

    #[test]
    fn real_libtorch_shape_errors_are_caught() {
        let e = catch_torch("matmul", || {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            Ok(a.matmul(&a))
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Compute);
        assert!(e.to_string().starts_with("matmul failed in libtorch: "), "{e}");
        assert_eq!(catch_torch("ok", || Ok(3)).unwrap(), 3);
    }
}
