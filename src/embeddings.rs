//! Textual-inversion embeddings: files of learned token vectors, read into a token name and
//! the vectors that the tokenizers and text encoders take (see `Pipeline::load_embeddings`).
//!
//! Formats, all `.safetensors` (pickles — `.pt`, `.bin` — are refused with a conversion hint,
//! since loading a pickle runs code):
//! - A1111: `emb_params` `[n, width]`, or `string_to_param.*` as a `.pt` converted with its
//!   keys flattened; the token is the file name without extension, as A1111 names them;
//! - A1111 SDXL: `clip_l` `[n, 768]` for the first text encoder and `clip_g` `[n, 1280]` for
//!   the second; the token is the file name;
//! - diffusers' `learned_embeds.safetensors`: one tensor named by its token (`<cat-toy>`),
//!   `[width]` or `[n, width]`.
//!
//! A token of n vectors becomes n tokens, as diffusers' `load_textual_inversion` adds them:
//! `tok`, `tok_1` … `tok_{n-1}`, with ids after the vocabulary in loading order; `tok` in a
//! prompt stands for all n. An embedding must fit the model: its width is the text encoder's
//! (SD 1.x 768, SD 2.x 1024), and SDXL needs `clip_l` + `clip_g`; one that does not is an error
//! naming the file (in an embeddings folder, a warning, and the file is skipped, as A1111 skips
//! embeddings made for another model).

use crate::loading::weights::PICKLE_EXTENSIONS;
use crate::loading::Weights;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The most vectors one embedding may have: a prompt has room for 75 tokens.
pub const MAX_VECTORS: usize = 75;

/// An embedding as the record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingRecord {
    /// What to write in a prompt.
    pub token: String,
    /// The file as it was given (or found in the embeddings folder).
    pub file: PathBuf,
    pub sha256: String,
    /// How many tokens it stands for.
    pub vectors: usize,
}

/// The vectors of an embedding, fp32 on the CPU.
#[derive(Debug)]
pub enum Vectors {
    /// SD 1.x / 2.x: `[n, width]` for the one text encoder.
    Single(Tensor),
    /// SDXL: `[n, width]` each, `clip_l` for the first text encoder, `clip_g` for the second.
    Sdxl { clip_l: Tensor, clip_g: Tensor },
}

/// One embedding file, read and checked.
#[derive(Debug)]
pub struct Embedding {
    pub token: String,
    pub path: PathBuf,
    pub sha256: String,
    pub vectors: Vectors,
}

/// What a pickle embedding is told: sdgen won't open it, and how to convert it.
fn pickle_hint(path: &Path) -> Error {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "NAME".into());
    Error::weights(
        path,
        format!(
            "is a Python pickle, and loading a pickle runs arbitrary code, so sdgen refuses it; convert it to \
             .safetensors (the token stays the file name), e.g. in Python: `import torch, safetensors.torch as st; \
             d = torch.load(\"{stem}.pt\", weights_only=True); st.save_file({{\"emb_params\": \
             d[\"string_to_param\"][\"*\"].contiguous()}}, \"{stem}.safetensors\")`"
        ),
    )
}

/// Whether the file looks like a pickle: a pickle extension, or a zip (torch.save) or
/// pickle-protocol header under another name.
fn is_pickle(path: &Path) -> Result<bool> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    if PICKLE_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(ext)) {
        return Ok(true);
    }
    use std::io::Read;
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    Ok((n >= 4 && &head == b"PK\x03\x04") || (n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1])))
}

/// `[width]` or `[n, width]` with 1 ≤ n ≤ [`MAX_VECTORS`], finite, as `[n, width]` fp32.
fn vectors_of(w: &Weights, path: &Path, name: &str) -> Result<Tensor> {
    let shape = w.shape_of(name).unwrap_or_default();
    let ok = match shape.as_slice() {
        [width] => *width > 0,
        [n, width] => *n > 0 && *width > 0,
        _ => false,
    };
    if !ok {
        return Err(Error::weights(
            path,
            format!("tensor '{name}' has shape {shape:?}; an embedding is [vectors, width] or [width]"),
        ));
    }
    let t = w.get_owned(name, &shape)?;
    let t = if shape.len() == 1 { t.f_unsqueeze(0)? } else { t };
    let n = t.size()[0] as usize;
    if n > MAX_VECTORS {
        return Err(Error::weights(
            path,
            format!("tensor '{name}' holds {n} vectors; a prompt has room for {MAX_VECTORS} tokens in all"),
        ));
    }
    if !bool::try_from(t.f_isfinite()?.f_all()?)? {
        return Err(Error::weights(path, format!("tensor '{name}' holds NaN or infinite values")));
    }
    Ok(t)
}

impl Embedding {
    /// Reads an embedding file (see the module's header for the formats and the token).
    pub fn read(path: &Path) -> Result<Embedding> {
        if !path.is_file() {
            let what = if path.exists() { "is not a file" } else { "does not exist" };
            return Err(Error::invalid(format!("embedding {} {what}", path.display())));
        }
        if is_pickle(path)? {
            return Err(pickle_hint(path));
        }
        let w = Weights::open(&[path.to_path_buf()], Device::Cpu, Kind::Float)?;
        let names = w.names();
        let stem = || path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let params: Vec<&String> = names.iter().filter(|n| n.starts_with("string_to_param.")).collect();
        let (token, vectors) = if w.contains("clip_l") && w.contains("clip_g") {
            let clip_l = vectors_of(&w, path, "clip_l")?;
            let clip_g = vectors_of(&w, path, "clip_g")?;
            let (nl, ng) = (clip_l.size()[0], clip_g.size()[0]);
            if nl != ng {
                return Err(Error::weights(
                    path,
                    format!("clip_l has {nl} vectors and clip_g {ng}; an SDXL embedding has as many of each"),
                ));
            }
            (stem(), Vectors::Sdxl { clip_l, clip_g })
        } else if w.contains("emb_params") {
            (stem(), Vectors::Single(vectors_of(&w, path, "emb_params")?))
        } else if let [one] = params.as_slice() {
            (stem(), Vectors::Single(vectors_of(&w, path, one)?))
        } else if let [key] = names.as_slice() {
            // diffusers' learned_embeds: the one tensor is named by its token.
            (key.clone(), Vectors::Single(vectors_of(&w, path, key)?))
        } else {
            let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
            return Err(Error::weights(
                path,
                format!(
                    "not a textual-inversion embedding: expected 'emb_params', one 'string_to_param.*' or \
                     'clip_l' + 'clip_g' (A1111), or a single tensor named by its token (diffusers' \
                     learned_embeds), found {} tensor(s) {shown:?}",
                    names.len()
                ),
            ));
        };
        if token.is_empty() {
            return Err(Error::weights(path, "has no name to use as its token"));
        }
        let sha256 = crate::loading::sha256_file(path)?;
        Ok(Embedding { token, path: path.to_path_buf(), sha256, vectors })
    }

    /// How many tokens the embedding stands for.
    pub fn count(&self) -> usize {
        match &self.vectors {
            Vectors::Single(t) | Vectors::Sdxl { clip_l: t, .. } => t.size()[0] as usize,
        }
    }

    pub fn record(&self) -> EmbeddingRecord {
        EmbeddingRecord {
            token: self.token.clone(),
            file: self.path.clone(),
            sha256: self.sha256.clone(),
            vectors: self.count(),
        }
    }

    /// Errors, naming the file, unless the embedding fits text encoders of these token widths
    /// (`second`: SDXL's second encoder).
    pub fn check_fits(&self, first: i64, second: Option<i64>) -> Result<()> {
        let width = |t: &Tensor| t.size()[1];
        let wrong = |msg: String| Err(Error::weights(&self.path, msg));
        match (&self.vectors, second) {
            (Vectors::Single(t), None) if width(t) == first => Ok(()),
            (Vectors::Single(t), None) => wrong(format!(
                "the embedding's vectors are {} wide but this model's text encoder takes {first} (SD 1.x \
                 embeddings are 768 wide, SD 2.x 1024): it was made for another model family",
                width(t)
            )),
            (Vectors::Single(t), Some(_)) => wrong(format!(
                "an embedding for a model with one text encoder (vectors {} wide); this SDXL model needs an SDXL \
                 embedding, with clip_l and clip_g",
                width(t)
            )),
            (Vectors::Sdxl { .. }, None) => {
                wrong(format!("an SDXL embedding (clip_l and clip_g); this model has one text encoder, {first} wide"))
            }
            (Vectors::Sdxl { clip_l, clip_g }, Some(second)) if width(clip_l) == first && width(clip_g) == second => {
                Ok(())
            }
            (Vectors::Sdxl { clip_l, clip_g }, Some(second)) => wrong(format!(
                "clip_l is {} and clip_g {} wide, but this model's text encoders take {first} and {second}",
                width(clip_l),
                width(clip_g)
            )),
        }
    }
}

/// The `.safetensors` files in `dir` and its subfolders (as A1111 reads its embeddings
/// folder), sorted by path; and the pickles found there, which are not loaded.
pub fn files_in(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if !dir.is_dir() {
        let what = if dir.exists() { "is not a folder" } else { "does not exist" };
        return Err(Error::invalid(format!("embeddings folder {} {what}", dir.display())));
    }
    let (mut found, mut pickles) = (Vec::new(), Vec::new());
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::io_op(crate::error::IoOp::ListFolder, &d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io_op(crate::error::IoOp::ListFolder, &d, e))?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
            // Links are followed for files only, so a link cycle cannot loop.
            if kind.is_dir() && !hidden && depth < 8 {
                todo.push((path, depth + 1));
            } else if !hidden && path.is_file() {
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if ext.eq_ignore_ascii_case("safetensors") {
                    found.push(path);
                } else if PICKLE_EXTENSIONS.iter().any(|p| p.eq_ignore_ascii_case(ext)) {
                    pickles.push(path);
                }
            }
        }
    }
    found.sort();
    pickles.sort();
    Ok((found, pickles))
}

/// What the embeddings asked for add to `plan::run_key`: each file's name and sha256, the
/// given files first, then the folder's. Empty when there are none.
pub fn key_entries(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<(String, String)>> {
    let mut all = files.to_vec();
    if let Some(dir) = dir {
        all.extend(files_in(dir)?.0);
    }
    all.iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((name, crate::loading::sha256_file(p)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        Tensor::write_safetensors(&refs, &path).unwrap();
        path
    }

    #[test]
    fn formats_name_their_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let v = |n: i64, w: i64| Tensor::ones([n, w], (Kind::Float, Device::Cpu));
        let a = Embedding::read(&write(dir.path(), "Easy Neg.safetensors", &[("emb_params", v(2, 8))])).unwrap();
        assert_eq!((a.token.as_str(), a.count()), ("Easy Neg", 2));
        let s = write(dir.path(), "st.safetensors", &[("string_to_param.*", v(1, 8)), ("string_to_token.*", v(1, 1))]);
        assert_eq!(Embedding::read(&s).unwrap().token, "st");
        let d =
            write(dir.path(), "learned_embeds.safetensors", &[("<x>", Tensor::ones([8], (Kind::Half, Device::Cpu)))]);
        let d = Embedding::read(&d).unwrap();
        assert_eq!((d.token.as_str(), d.count()), ("<x>", 1));
        assert!(d.check_fits(8, None).is_ok() && d.check_fits(16, None).is_err() && d.check_fits(8, Some(8)).is_err());
        let x = write(dir.path(), "xl.safetensors", &[("clip_l", v(3, 8)), ("clip_g", v(3, 12))]);
        let x = Embedding::read(&x).unwrap();
        assert!(x.check_fits(8, Some(12)).is_ok() && x.check_fits(8, None).is_err());
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let v = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, Device::Cpu));
        let cases = [
            write(dir.path(), "two.safetensors", &[("a", v(&[1, 8])), ("b", v(&[1, 8]))]),
            write(dir.path(), "cube.safetensors", &[("emb_params", v(&[1, 2, 8]))]),
            write(dir.path(), "many.safetensors", &[("emb_params", v(&[76, 8]))]),
            write(dir.path(), "nan.safetensors", &[("emb_params", v(&[1, 8]) / 0.0 * 0.0)]),
            write(dir.path(), "ints.safetensors", &[("emb_params", Tensor::from_slice(&[1i32, 2]))]),
            write(dir.path(), "uneven.safetensors", &[("clip_l", v(&[1, 8])), ("clip_g", v(&[2, 12]))]),
        ];
        for path in cases {
            let e = Embedding::read(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let pt = dir.path().join("old.pt");
        std::fs::write(&pt, b"PK\x03\x04rest").unwrap();
        let e = Embedding::read(&pt).unwrap_err().to_string();
        assert!(e.contains("old.pt") && e.contains("pickle") && e.contains("old.safetensors"), "{e}");
        // A pickle renamed to .safetensors is still a pickle.
        let renamed = dir.path().join("renamed.safetensors");
        std::fs::write(&renamed, [0x80, 0x02, b'}', b'q']).unwrap();
        assert!(Embedding::read(&renamed).unwrap_err().to_string().contains("pickle"));
        assert!(Embedding::read(&dir.path().join("missing.safetensors")).unwrap_err().to_string().contains("missing"));
    }
}
