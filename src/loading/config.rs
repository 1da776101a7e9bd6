//! Reading a component's `config.json`, with errors that name the file and the field.

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses a JSON config file into `T`. Errors name the file, the field path, and the problem.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &text)
}

/// Parses JSON text that came from `path` (used in messages only).
pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let at = if field.is_empty() || field == "." { String::new() } else { format!("field '{field}': ") };
        Error::config(path, format!("{at}{inner}"))
    })
}
