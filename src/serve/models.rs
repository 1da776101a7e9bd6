//! The models a server may switch among: the one it started with and the entries of
//! `--models-dir`, chosen by name only (a request never names a path).

use crate::pipeline::LoadOptions;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// One model a client may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The folder's or file's name in the models folder (`tiny-sd`, `model.safetensors`).
    pub name: String,
    pub path: PathBuf,
}

/// The starting model and the models folder.
#[derive(Debug, Clone)]
pub struct Models {
    /// How the starting model is loaded; switched models reuse its device, dtype and memory
    /// options, not its model-specific overrides.
    pub base: LoadOptions,
    /// The starting model's name.
    pub start_name: String,
    pub dir: Option<PathBuf>,
    /// A tiny autoencoder (folder or file) that decodes every model's progress previews.
    pub preview_vae: Option<PathBuf>,
}

impl Models {
    /// The models a client may choose: the starting one, then the folder's, by name.
    pub fn list(&self) -> Vec<Entry> {
        let mut out = vec![Entry { name: self.start_name.clone(), path: self.base.model.clone() }];
        if let Some(dir) = &self.dir {
            let mut found: Vec<Entry> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| is_model(&e.path()))
                        .filter_map(|e| Some(Entry { name: e.file_name().to_str()?.to_string(), path: e.path() }))
                        .collect()
                })
                .unwrap_or_default();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            out.extend(found.into_iter().filter(|e| e.name != self.start_name));
        }
        out
    }

    /// Finds a model by the name a client gives: its name, its name without `.safetensors`,
    /// or A1111's title `name [hash]`.
    pub fn find(&self, wanted: &str) -> Option<Entry> {
        let wanted = wanted.trim();
        let bare = match wanted.rsplit_once(" [") {
            Some((name, hash)) if hash.ends_with(']') => name,
            _ => wanted,
        };
        self.list().into_iter().find(|e| e.name == bare || stem(&e.name) == bare)
    }

    /// Loads a model with [`Models::preview_vae`] for its previews. One that does not fit the
    /// model (TAESD on SDXL) fails the load when `strict` (the starting model: a mistake in the
    /// server's options); for a model switched to, its previews stay cheap, with a warning.
    pub fn load(&self, opts: &LoadOptions, strict: bool) -> Result<crate::Pipeline> {
        let mut pipe = crate::Pipeline::load(opts)?;
        if let Some(path) = &self.preview_vae {
            match pipe.load_preview_vae(path, None) {
                Ok(()) => {}
                Err(e) if !strict => log::warn!("{}: cheap previews, as {e}", opts.model.display()),
                Err(e) => return Err(e),
            }
        }
        Ok(pipe)
    }

    /// How to load the model named `name`.
    pub fn load_options(&self, name: &str) -> Result<LoadOptions> {
        let entry = self.find(name).ok_or_else(|| {
            let names: Vec<String> = self.list().into_iter().map(|e| e.name).collect();
            Error::invalid(format!("sd_model_checkpoint: no model named {name:?}; available: {}", names.join(", ")))
        })?;
        if entry.name == self.start_name && entry.path == self.base.model {
            return Ok(self.base.clone());
        }
        Ok(LoadOptions {
            model: entry.path,
            source_label: None,
            config_dir: None,
            arch: None,
            prediction_type: None,
            ..self.base.clone()
        })
    }
}

/// The name a client sees for a model path: its file or folder name.
pub fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// `x.safetensors` → `x`.
pub fn stem(name: &str) -> &str {
    name.strip_suffix(".safetensors").unwrap_or(name)
}

/// A diffusers folder (with `model_index.json` or `unet/`) or a `.safetensors` file.
fn is_model(path: &Path) -> bool {
    if path.is_dir() {
        path.join("model_index.json").is_file() || path.join("unet").is_dir()
    } else {
        path.extension().is_some_and(|x| x == "safetensors")
    }
}
