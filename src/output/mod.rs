//! The output side: generated images written as PNG files that carry how they were made
//! (A1111 `parameters` text and sdgen's full record) and the model's licence notice.
//!
//! Nothing here knows about tch: it takes an [`Image`] (RGB bytes) and a [`Record`].
//!
//! ```no_run
//! # fn demo(image: &sdgen::Image, record: &sdgen::Record) -> sdgen::Result<()> {
//! use sdgen::output::{naming, save_png, NameFields, OnExisting, SaveOptions, Template};
//! let template = Template::parse(naming::DEFAULT_TEMPLATE)?;
//! let ts = naming::timestamp_now();
//! let fields = NameFields { index: 0, seed: record.request.seed, prompt: &record.request.prompt, timestamp: &ts };
//! let path = template.resolve("outputs".as_ref(), &fields)?;
//! let options = SaveOptions { sampler_a1111: "Euler a", schedule_type: None, on_existing: OnExisting::AddSuffix };
//! let written = save_png(&path, image, record, &options)?;
//! # Ok(()) }
//! ```

pub mod atomic;
pub mod license;
pub mod metadata;
pub mod naming;
pub mod png;
pub mod png_text;

use std::path::{Path, PathBuf};

pub use atomic::{create_folder, remove_stale_temps, write_file, OnExisting, Stale, TransientFile};
pub use license::{ensure_notice_file, full_text, NOTICE_FILE_NAME};
pub use metadata::{
    parameters_text, parse_parameters, read_record, ParsedParameters, LICENSE_KEY, PARAMETERS_KEY, RECORD_KEY,
};
pub use naming::{preview_path, NameFields, Template, DEFAULT_TEMPLATE};
pub use png::{encode_png, read_text_chunks, write_png};

use crate::{Image, Record, Result};

/// How [`save_png`] writes one image.
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions<'a> {
    /// A1111 display name of the scheduler (`Euler a`, `DPM++ 2M`, ...), from the scheduler table.
    pub sampler_a1111: &'a str,
    /// A1111 schedule type (`Karras`, ...), if the scheduler has one.
    pub schedule_type: Option<&'a str>,
    /// Use [`OnExisting::AddSuffix`] with the default template, [`OnExisting::Fail`] with a
    /// name the user chose, [`OnExisting::Overwrite`] only when asked to.
    pub on_existing: OnExisting,
}

/// The three text chunks every sdgen PNG carries: `parameters`, `sdgen` (record), `license`.
pub fn text_chunks(
    record: &Record,
    sampler_a1111: &str,
    schedule_type: Option<&str>,
) -> Result<[(&'static str, String); 3]> {
    Ok([
        (PARAMETERS_KEY, parameters_text(record, sampler_a1111, schedule_type)),
        (RECORD_KEY, metadata::record_json(record)?),
        (LICENSE_KEY, license::notice(&record.model.license)),
    ])
}

/// Saves one image at `path` with its `parameters`, `sdgen` (record) and `license` text
/// chunks. Creates the parent folder if needed and, the first time, the licence notice file
/// in it. Returns the path written (see [`OnExisting::AddSuffix`]).
pub fn save_png(path: &Path, image: &Image, record: &Record, options: &SaveOptions<'_>) -> Result<PathBuf> {
    let chunks = text_chunks(record, options.sampler_a1111, options.schedule_type)?;

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_folder(dir)?;
    ensure_notice_file(dir, &record.model.license)?;

    let text = chunks.each_ref().map(|(k, v)| (*k, v.as_str()));
    write_png(path, image, &text, options.on_existing)
}
