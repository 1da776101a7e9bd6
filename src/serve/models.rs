//! The models a server may switch among: the one it started with and the entries of
//! `--models-dir`, chosen by name only (a request never names a path); and likewise the
//! VAEs (A1111's `sd_vae`): the one given with `--vae` at start and the entries of `--vae-dir`.

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
    /// VAEs `sd_vae` may switch to, by name.
    pub vae_dir: Option<PathBuf>,
}

/// What A1111's `sd_vae` says when the model's own VAE is loaded; "None" means the same.
pub const OWN_VAE: &str = "Automatic";

/// Whether an `sd_vae` value asks for the model's own VAE (A1111's "Automatic" picks a VAE
/// named after the checkpoint when there is one; sdgen has no such files, so both mean the
/// model's own).
pub fn is_own_vae(name: &str) -> bool {
    let name = name.trim();
    name.is_empty() || name.eq_ignore_ascii_case(OWN_VAE) || name.eq_ignore_ascii_case("None")
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

    /// The VAEs a client may choose: the one the server started with (`--vae`), then the
    /// folder's (`.safetensors` files and diffusers VAE folders), by name.
    pub fn vaes(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self.start_vae().into_iter().collect();
        if let Some(dir) = &self.vae_dir {
            let mut found: Vec<Entry> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| is_vae(&e.path()))
                        .filter_map(|e| Some(Entry { name: e.file_name().to_str()?.to_string(), path: e.path() }))
                        .collect()
                })
                .unwrap_or_default();
            found.sort_by(|a, b| a.name.cmp(&b.name));
            let start = out.first().map(|e| e.name.clone());
            out.extend(found.into_iter().filter(|e| Some(&e.name) != start.as_ref()));
        }
        out
    }

    /// The VAE the server started with, named as clients see it.
    pub fn start_vae(&self) -> Option<Entry> {
        let path = self.base.vae.clone()?;
        let name = match &self.base.vae_label {
            Some(label) => name_of(Path::new(label)),
            None => name_of(&path),
        };
        Some(Entry { name, path })
    }

    /// Finds a VAE by the name a client gives: its name or its name without `.safetensors`.
    pub fn find_vae(&self, wanted: &str) -> Option<Entry> {
        let wanted = wanted.trim();
        self.vaes().into_iter().find(|e| e.name == wanted || stem(&e.name) == wanted)
    }

    /// The VAE named `name` (`None`: the model's own), or an error naming `field` and listing
    /// the choices.
    pub fn vae_choice(&self, field: &str, name: &str) -> Result<Option<Entry>> {
        if is_own_vae(name) {
            return Ok(None);
        }
        self.find_vae(name).map(Some).ok_or_else(|| {
            let mut names = vec![OWN_VAE.to_string()];
            names.extend(self.vaes().into_iter().map(|e| e.name));
            Error::invalid(format!(
                "{field}: no VAE named {name:?} (GET /sdapi/v1/sd-vae lists them; {}: {})",
                if self.vae_dir.is_some() { "choose one of" } else { "the server has no --vae-dir, so only" },
                names.join(", ")
            ))
        })
    }

    /// Loads a model with [`Models::preview_vae`] for its previews. One that does not fit the
    /// model (TAESD on SDXL) fails the load when `strict` (the starting model: a mistake in the
    /// server's options); for a model switched to, its previews stay cheap, with a warning.
    /// `spec` is the model's [`LoadOptions::inspect`] when the caller has it already.
    pub fn load(
        &self,
        opts: &LoadOptions,
        spec: Option<crate::plan::ModelSpec>,
        strict: bool,
    ) -> Result<crate::Pipeline> {
        let mut pipe = match spec {
            Some(spec) => crate::Pipeline::from_spec(opts, spec)?,
            None => crate::Pipeline::load(opts)?,
        };
        if let Some(path) = &self.preview_vae {
            match pipe.load_preview_vae(path, None) {
                Ok(()) => {}
                Err(e) if !strict => log::warn!("{}: cheap previews, as {e}", opts.model.display()),
                Err(e) => return Err(e),
            }
        }
        Ok(pipe)
    }

    /// How to load the model named `name` with the VAE named `vae` (`None`: the model's own).
    pub fn load_options(&self, name: &str, vae: Option<&str>) -> Result<LoadOptions> {
        let entry = self.find(name).ok_or_else(|| {
            let names: Vec<String> = self.list().into_iter().map(|e| e.name).collect();
            Error::invalid(format!("sd_model_checkpoint: no model named {name:?}; available: {}", names.join(", ")))
        })?;
        let mut opts = if entry.name == self.start_name && entry.path == self.base.model {
            self.base.clone()
        } else {
            LoadOptions {
                model: entry.path,
                source_label: None,
                config_dir: None,
                arch: None,
                prediction_type: None,
                ..self.base.clone()
            }
        };
        match vae.map(|v| self.vae_choice("sd_vae", v)).transpose()?.flatten() {
            // The starting VAE keeps its label (a hub id) as given.
            Some(e) if self.start_vae().as_ref() == Some(&e) => {}
            // Records name a folder's VAE by its name there, never by the server's path.
            Some(e) => (opts.vae, opts.vae_label, opts.vae_sha256) = (Some(e.path), Some(e.name), None),
            None => (opts.vae, opts.vae_label, opts.vae_sha256) = (None, None, None),
        }
        Ok(opts)
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

/// A diffusers VAE folder (with `config.json`) or a `.safetensors` file.
fn is_vae(path: &Path) -> bool {
    if path.is_dir() {
        path.join("config.json").is_file()
    } else {
        path.extension().is_some_and(|x| x == "safetensors")
    }
}

/// A diffusers folder (with `model_index.json` or `unet/`) or a `.safetensors` file.
fn is_model(path: &Path) -> bool {
    if path.is_dir() {
        path.join("model_index.json").is_file() || path.join("unet").is_dir()
    } else {
        path.extension().is_some_and(|x| x == "safetensors")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(dir: &Path, start_vae: Option<(&str, Option<&str>)>) -> Models {
        let base = LoadOptions {
            model: dir.join("model"),
            vae: start_vae.map(|(p, _)| dir.join(p)),
            vae_label: start_vae.and_then(|(_, l)| l.map(str::to_string)),
            vae_sha256: start_vae.map(|_| "ab".repeat(32)),
            ..LoadOptions::default()
        };
        Models { base, start_name: "model".into(), dir: None, preview_vae: None, vae_dir: Some(dir.join("vaes")) }
    }

    #[test]
    fn vaes_are_the_start_one_then_the_folders_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let vaes = dir.path().join("vaes");
        std::fs::create_dir_all(vaes.join("kl-folder")).unwrap();
        std::fs::write(vaes.join("kl-folder/config.json"), "{}").unwrap();
        std::fs::create_dir_all(vaes.join("no-config")).unwrap();
        for f in ["b.safetensors", "a.ckpt", "fix.safetensors"] {
            std::fs::write(vaes.join(f), "").unwrap();
        }
        // Started with a hub VAE: named by the repo, its path is the cache's.
        let m = models(dir.path(), Some(("cache/snap", Some("madebyollin/sdxl-vae-fp16-fix"))));
        let names: Vec<String> = m.vaes().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["sdxl-vae-fp16-fix", "b.safetensors", "fix.safetensors", "kl-folder"]);
        assert_eq!(m.find_vae("b").unwrap().name, "b.safetensors");
        assert!(m.find_vae("a.ckpt").is_none() && m.find_vae("no-config").is_none());
        assert!(m.find_vae("../vaes/b.safetensors").is_none());

        // The start VAE keeps its label and recorded sha256; a folder's is named by its name.
        let start = m.load_options("model", Some("sdxl-vae-fp16-fix")).unwrap();
        assert_eq!(start.vae_label.as_deref(), Some("madebyollin/sdxl-vae-fp16-fix"));
        assert!(start.vae_sha256.is_some());
        let b = m.load_options("model", Some("b")).unwrap();
        assert_eq!(
            (b.vae, b.vae_label, b.vae_sha256),
            (Some(vaes.join("b.safetensors")), Some("b.safetensors".into()), None)
        );
        for own in [None, Some("Automatic"), Some("None"), Some("automatic")] {
            let o = m.load_options("model", own).unwrap();
            assert_eq!((o.vae, o.vae_label, o.vae_sha256), (None, None, None), "{own:?}");
        }
        let e = m.vae_choice("sd_vae", "nope").unwrap_err().to_string();
        assert!(e.starts_with("sd_vae: ") && e.contains("fix.safetensors") && e.contains("Automatic"), "{e}");
    }

    #[test]
    fn without_a_folder_only_the_start_vae_and_automatic() {
        let dir = tempfile::tempdir().unwrap();
        let m = Models { vae_dir: None, ..models(dir.path(), Some(("my-vae.safetensors", None))) };
        assert_eq!(m.vaes().into_iter().map(|e| e.name).collect::<Vec<_>>(), ["my-vae.safetensors"]);
        let e = m.vae_choice("override_settings.sd_vae", "x").unwrap_err().to_string();
        assert!(e.contains("no --vae-dir"), "{e}");
        assert!(Models { vae_dir: None, ..models(dir.path(), None) }.vaes().is_empty());
    }
}
