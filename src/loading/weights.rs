//! Memory-mapped safetensors weights, handed out by name with shape checks.
//!
//! Files are mapped, never read whole. On the CPU, a tensor already stored in the run's
//! dtype is not copied at all: the model's tensor borrows the mapped bytes (as diffusers'
//! safetensors loading does), so loading costs no memory and pages come in from the page
//! cache when first used. Models keep the mapping alive with the [`MapGuard`] they hold.
//! Any other tensor (another dtype, or a GPU run) is copied out of the map into libtorch
//! memory on the target device and dtype, then its pages are dropped from the mapping, so
//! peak resident memory stays near one copy of the weights. Conversion to the run's dtype
//! happens per tensor too, so a file stored in fp32 loaded as fp16 peaks at the fp16 model
//! plus one fp32 tensor.
//!
//! Models ask for tensors by their diffusers name and expected shape through [`Weights`].
//! A missing tensor, a shape mismatch, and (at [`Weights::finish`]) a tensor nobody asked
//! for are errors that name the tensor and the file.

use crate::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Extensions of Python pickle checkpoints, which sdgen never opens.
pub const PICKLE_EXTENSIONS: [&str; 5] = ["ckpt", "pt", "pth", "bin", "pkl"];

/// Why sdgen won't open a `.{ext}` file, and how to convert it to safetensors.
pub fn pickle_refusal(ext: &str) -> String {
    format!(
        ".{ext} files are Python pickles, and loading a pickle runs arbitrary code, so sdgen refuses them. \
         Convert it to .safetensors first, e.g. in Python: \
         `safetensors.torch.save_file(torch.load(p, weights_only=True)[\"state_dict\"], \"model.safetensors\")`"
    )
}

/// Errors, naming the file, when `path` has a pickle extension.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match PICKLE_EXTENSIONS.iter().find(|p| p.eq_ignore_ascii_case(ext)) {
        Some(p) => Err(Error::weights(path, pickle_refusal(p))),
        None => Ok(()),
    }
}

/// Where a tensor's bytes live inside a mapped file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
    /// Byte range inside the file's mapping (absolute, header included).
    pub start: usize,
    pub end: usize,
}

/// The bytes of one tensor in a mapped file (the mapping stays alive while this lives).
#[derive(Clone)]
pub(crate) struct MappedPages {
    mmap: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for MappedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedPages({}..{})", self.start, self.end)
    }
}

impl MappedPages {
    /// Drops the pages from memory; they are read again from the file if touched.
    pub(crate) fn release(&self) {
        let start = self.start & !4095;
        // SAFETY: the mapping is a read-only file mapping; DONTNEED only drops clean pages,
        // which are read again from the file if touched later.
        unsafe {
            let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, self.end - start);
        }
    }
}

/// One mapped `.safetensors` file with its validated header.
pub struct MappedFile {
    pub path: PathBuf,
    mmap: Arc<Mmap>,
}

/// Keeps weight files mapped for as long as a model whose tensors borrow their bytes lives.
/// Models hold it as their last field, so it is dropped after their tensors.
pub struct MapGuard(#[allow(dead_code)] Vec<Arc<Mmap>>);

impl std::fmt::Debug for MapGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MapGuard({} mapped files)", self.0.len())
    }
}

impl MappedFile {
    /// Maps a file and checks that its header is well-formed and every tensor lies inside it.
    pub fn open(path: &Path) -> Result<(MappedFile, Vec<(String, TensorEntry)>)> {
        refuse_pickle(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; sdgen never writes to weight files, and a file
        // changed by another process while mapped is outside what any loader can defend.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, _) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            Error::weights(path, format!("not a valid safetensors file ({e}); it may be truncated or corrupt"))
        })?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| {
            Error::weights(path, format!("not a valid safetensors file ({e}); it may be truncated or corrupt"))
        })?;
        let data_start = 8 + header_len;
        let base = mmap.as_ptr() as usize;
        let mut entries = Vec::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let start = data.as_ptr() as usize - base;
            debug_assert!(start >= data_start);
            let Some(shape) = checked_shape(view.shape()) else {
                return Err(Error::weights(
                    path,
                    format!("tensor '{name}' has shape {:?}, too large to address", view.shape()),
                ));
            };
            entries.push((name, TensorEntry { file: 0, dtype: view.dtype(), shape, start, end: start + data.len() }));
        }
        Ok((MappedFile { path: path.to_path_buf(), mmap: Arc::new(mmap) }, entries))
    }
}

/// The shape as libtorch sizes, if every dimension and the product of the non-zero ones fit
/// in an i64. safetensors only checks that the element count matches the bytes, so an empty
/// tensor may claim `[0, 2^40, 2^40]`, whose strides would overflow.
fn checked_shape(shape: &[usize]) -> Option<Vec<i64>> {
    let dims: Vec<i64> = shape.iter().map(|&d| i64::try_from(d).ok()).collect::<Option<_>>()?;
    dims.iter().filter(|&&d| d != 0).try_fold(1i64, |acc, &d| acc.checked_mul(d))?;
    Some(dims)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Buffers that checkpoints store as integers and models read only to account for them
/// (CLIP's `position_ids`); every other tensor a model asks for is a floating-point weight.
const INTEGER_BUFFERS: &[&str] = &["position_ids"];

/// Refuses a weight stored in an integer or boolean dtype: its bytes would be read as
/// integers and the model would fail deep inside libtorch (a file whose header was edited,
/// or not a Stable Diffusion checkpoint at all).
fn check_dtype(path: &Path, name: &str, key: &str, dtype: Dtype) -> Result<()> {
    let floating = matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64);
    let buffer = INTEGER_BUFFERS.iter().any(|b| name.rsplit('.').next() == Some(b));
    if floating || buffer {
        return Ok(());
    }
    let stored = if key == name { format!("'{name}'") } else { format!("'{name}' (stored as '{key}')") };
    Err(Error::weights(
        path,
        format!(
            "tensor {stored} has dtype {dtype:?}, but model weights must be floating point (F32, F16, BF16 or \
             F64); the file is damaged or is not a Stable Diffusion checkpoint"
        ),
    ))
}

/// Row-major strides of `shape`, in elements.
fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// How a requested name maps onto stored bytes: usually one-to-one, but converted
/// checkpoints may need a slice of a fused tensor, a reshape (1x1 conv ↔ linear) or a
/// transpose (OpenCLIP's `text_projection`, applied as `x @ P` where a Linear does `x @ W.T`).
#[derive(Debug, Clone)]
pub struct Source {
    pub key: String,
    /// Take rows `start..start+len` along dim 0 (fused q/k/v projections).
    pub slice0: Option<(i64, i64)>,
    /// Accept any stored shape with the same element count and reshape to the request.
    pub reshape: bool,
    /// The stored matrix is the transpose of the requested one (2-D tensors only).
    pub transpose: bool,
}

impl Source {
    pub fn direct(key: impl Into<String>) -> Source {
        Source { key: key.into(), slice0: None, reshape: false, transpose: false }
    }

    /// The shape a request sees: after the slice and the transpose.
    fn view_shape(&self, stored: &[i64]) -> Vec<i64> {
        let mut shape = stored.to_vec();
        if let (Some((_, len)), Some(first)) = (self.slice0, shape.first_mut()) {
            *first = len;
        }
        if self.transpose {
            shape.reverse();
        }
        shape
    }
}

struct Store {
    files: Vec<MappedFile>,
    entries: BTreeMap<String, TensorEntry>,
    /// Requested name → stored key, for names that differ from the file's.
    sources: BTreeMap<String, Source>,
    /// Whether names resolve only through `sources` (a renamed checkpoint).
    mapped: bool,
    used: RefCell<HashSet<String>>,
    device: Device,
    kind: Kind,
    conv: Cell<crate::models::conv::ConvAlgo>,
    maps: Cell<crate::models::conv::FeatureMaps>,
}

/// A view of a set of weight files under a name prefix, like a folder path.
#[derive(Clone)]
pub struct Weights {
    store: Rc<Store>,
    prefix: String,
}

impl Weights {
    /// Maps `paths` and prepares to hand out tensors on `device` in floating dtype `kind`.
    pub fn open(paths: &[PathBuf], device: Device, kind: Kind) -> Result<Weights> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for path in paths {
            let (file, list) = MappedFile::open(path)?;
            let idx = files.len();
            for (name, mut e) in list {
                e.file = idx;
                entries.insert(name, e);
            }
            files.push(file);
        }
        Ok(Weights {
            store: Rc::new(Store {
                files,
                entries,
                sources: BTreeMap::new(),
                mapped: false,
                used: RefCell::new(HashSet::new()),
                device,
                kind,
                conv: Cell::new(Default::default()),
                maps: Cell::new(Default::default()),
            }),
            prefix: String::new(),
        })
    }

    /// Like [`Weights::open`], with stored keys renamed: `sources` maps a requested
    /// (diffusers) name to where its bytes are stored. Used for checkpoints in other layouts.
    ///
    /// The store then holds only the stored keys that `sources` mentions: one single-file
    /// checkpoint feeds several models, so each model's [`Weights::finish`] must judge its own
    /// tensors only. Whoever builds `sources` accounts for the rest of the file. A source
    /// whose key the files lack is an error here, naming both names.
    pub fn open_mapped(
        paths: &[PathBuf],
        device: Device,
        kind: Kind,
        sources: BTreeMap<String, Source>,
    ) -> Result<Weights> {
        let w = Weights::open(paths, device, kind)?;
        let label = w.file_label();
        let mut store = Rc::try_unwrap(w.store).unwrap_or_else(|_| unreachable!("fresh store"));
        for (name, src) in &sources {
            if !store.entries.contains_key(&src.key) {
                return Err(Error::weights(
                    label,
                    format!("tensor '{name}' should come from '{}', which the file does not hold", src.key),
                ));
            }
        }
        let wanted: HashSet<&str> = sources.values().map(|s| s.key.as_str()).collect();
        store.entries.retain(|k, _| wanted.contains(k.as_str()));
        store.sources = sources;
        store.mapped = true;
        Ok(Weights { store: Rc::new(store), prefix: String::new() })
    }

    /// The same store, one level deeper: `w.pp("down_blocks").pp(0)` names `down_blocks.0.*`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Weights {
        let prefix = if self.prefix.is_empty() { part.to_string() } else { format!("{}.{}", self.prefix, part) };
        Weights { store: self.store.clone(), prefix }
    }

    /// The current name prefix (`down_blocks.0`), for messages.
    pub fn prefix_str(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> Device {
        self.store.device
    }

    pub fn kind(&self) -> Kind {
        self.store.kind
    }

    /// How convolutions built from these weights run on the CPU (see [`crate::models::conv`]).
    pub fn conv_algo(&self) -> crate::models::conv::ConvAlgo {
        self.store.conv.get()
    }

    /// Sets [`Weights::conv_algo`] for every view of this store; call it before building models.
    pub fn set_conv_algo(&self, algo: crate::models::conv::ConvAlgo) {
        self.store.conv.set(algo);
    }

    /// The feature maps the convolutions built from these weights run on (see
    /// [`crate::models::conv::FeatureMaps`]).
    pub fn feature_maps(&self) -> crate::models::conv::FeatureMaps {
        self.store.maps.get()
    }

    /// Sets [`Weights::feature_maps`] for every view of this store; call it before building models.
    pub fn set_feature_maps(&self, maps: crate::models::conv::FeatureMaps) {
        self.store.maps.set(maps);
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    fn resolve(&self, full: &str) -> Option<(Source, &TensorEntry)> {
        let src = match self.store.sources.get(full) {
            Some(src) => src.clone(),
            None if self.store.mapped => return None,
            None => Source::direct(full),
        };
        let entry = self.store.entries.get(&src.key)?;
        Some((src, entry))
    }

    /// Whether a tensor of this name exists (under the current prefix).
    pub fn contains(&self, name: &str) -> bool {
        self.resolve(&self.full(name)).is_some()
    }

    /// The stored shape of a tensor, if it exists (before any slice or reshape).
    pub fn shape_of(&self, name: &str) -> Option<Vec<i64>> {
        let full = self.full(name);
        let (src, e) = self.resolve(&full)?;
        Some(src.view_shape(&e.shape))
    }

    /// The weight file (or files) behind this store, for messages.
    pub(crate) fn file_label(&self) -> PathBuf {
        match self.store.files.as_slice() {
            [one] => one.path.clone(),
            many => PathBuf::from(many.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// What a model built from these weights must hold (as its last field) while it lives:
    /// its tensors may borrow the mapped files' bytes.
    pub(crate) fn map_guard(&self) -> MapGuard {
        MapGuard(self.store.files.iter().map(|f| f.mmap.clone()).collect())
    }

    /// For a tensor that is only read to make another one (which the model keeps instead):
    /// [`Weights::get`]'s tensor, and its pages in the mapped file, to drop with
    /// [`MappedPages::release`] once the other tensor is made, so that only that one stays in
    /// memory.
    pub(crate) fn get_with_pages(&self, name: &str, shape: &[i64]) -> Result<(Tensor, Option<MappedPages>)> {
        let t = self.get(name, shape)?;
        let pages = self.resolve(&self.full(name)).map(|(_, entry)| self.pages(entry));
        Ok((t, pages))
    }

    fn pages(&self, entry: &TensorEntry) -> MappedPages {
        MappedPages { mmap: self.store.files[entry.file].mmap.clone(), start: entry.start, end: entry.end }
    }

    /// Drops a tensor's pages from its file's mapping; they are read again if touched.
    fn release(&self, entry: &TensorEntry) {
        self.pages(entry).release();
    }

    /// The tensor `name` with the given shape, on the store's device, in its float dtype, in
    /// memory of its own (a copy where [`Weights::get`] would borrow the mapping).
    pub fn get_owned(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.get(name, shape)?;
        if self.store.device != Device::Cpu {
            return Ok(t);
        }
        let mut owned = t.f_empty_like()?;
        owned.f_copy_(&t)?;
        Ok(owned)
    }

    /// The tensor `name` with the given shape, on the store's device, in its float dtype.
    /// On the CPU it may borrow the mapped file (read-only: never modify it in place), so it
    /// is crate-private: the model that keeps it must also keep [`Weights::map_guard`].
    pub(crate) fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let full = self.full(name);
        let Some((src, entry)) = self.resolve(&full) else {
            return Err(Error::weights(
                self.file_label(),
                format!("missing tensor '{full}' (expected shape {shape:?})"),
            ));
        };
        let path = &self.store.files[entry.file].path;
        if src.slice0.is_some() && entry.shape.is_empty() {
            return Err(Error::weights(path, format!("tensor '{}' is a scalar, cannot slice it", src.key)));
        }
        if src.transpose && entry.shape.len() != 2 {
            return Err(Error::weights(
                path,
                format!("tensor '{}' has shape {:?}, expected a matrix to transpose", src.key, entry.shape),
            ));
        }
        let found = src.view_shape(&entry.shape);
        let numel = |s: &[i64]| s.iter().product::<i64>();
        let shape_ok = found == shape || (src.reshape && numel(&found) == numel(shape));
        if !shape_ok {
            return Err(Error::weights(path, format!("tensor '{full}' has shape {found:?}, expected {shape:?}")));
        }
        check_dtype(path, &full, &src.key, entry.dtype)?;
        let t = self.load(&src, entry)?;
        self.store.used.borrow_mut().insert(src.key.clone());
        Ok(if found == shape { t } else { t.reshape(shape) })
    }

    fn load(&self, src: &Source, entry: &TensorEntry) -> Result<Tensor> {
        let file = &self.store.files[entry.file];
        let kind = kind_of(entry.dtype).ok_or_else(|| {
            Error::weights(&file.path, format!("tensor '{}' has unsupported dtype {:?}", src.key, entry.dtype))
        })?;
        let bytes = &file.mmap[entry.start..entry.end];
        let floating = matches!(kind, Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16);
        let target = if floating { self.store.kind } else { kind };
        let aligned = (bytes.as_ptr() as usize) % kind.elt_size_in_bytes() == 0;
        if self.store.device == Device::Cpu && target == kind && aligned {
            let strides = contiguous_strides(&entry.shape);
            // SAFETY: the bytes hold exactly shape × dtype (checked by safetensors when the
            // file was opened), are aligned for the dtype, and stay mapped for as long as the
            // tensor lives: every model built from these weights holds their MapGuard. The
            // mapping is read-only and models never write to their weights.
            let mut t = unsafe { Tensor::f_from_blob(bytes.as_ptr(), &entry.shape, &strides, kind, Device::Cpu)? };
            if let Some((start, len)) = src.slice0 {
                t = t.f_narrow(0, start, len)?;
            }
            if src.transpose {
                // A copy of its own: the model keeps a contiguous matrix, as from a folder.
                t = t.f_tr()?.f_contiguous()?;
            }
            return Ok(t);
        }
        let mut t = Tensor::f_from_data_size(bytes, &entry.shape, kind)?;
        if let Some((start, len)) = src.slice0 {
            t = t.f_narrow(0, start, len)?.f_contiguous()?;
        }
        if src.transpose {
            t = t.f_tr()?.f_contiguous()?;
        }
        // Convert on the CPU, then upload: only this one tensor ever exists in the stored
        // dtype (an fp32 file loaded as fp16 never has an fp32 copy of the model), and the
        // device receives the smaller dtype.
        let t = t.f_to_kind(target)?.f_to_device(self.store.device)?;
        // The bytes now live in libtorch memory; drop the mapped pages from our RSS.
        self.release(entry);
        Ok(t)
    }

    /// Errors if some stored tensor was never asked for: the files hold a different model.
    pub fn finish(&self) -> Result<()> {
        let used = self.store.used.borrow();
        let extra: Vec<&String> = self.store.entries.keys().filter(|k| !used.contains(*k)).collect();
        if extra.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> =
            extra.iter().take(5).map(|k| format!("'{}' {:?}", k, self.store.entries[*k].shape)).collect();
        Err(Error::weights(
            self.file_label(),
            format!(
                "{} unexpected tensor(s) that the model's config does not declare: {}{}; \
                 the weights do not match config.json",
                extra.len(),
                shown.join(", "),
                if extra.len() > 5 { ", ..." } else { "" }
            ),
        ))
    }

    /// Every stored tensor name (for diagnostics and tests).
    pub fn names(&self) -> Vec<String> {
        self.store.entries.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_weights_are_an_error_naming_file_tensor_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let ints = Tensor::from_slice(&[1i32, 2, 3]);
        let pos = Tensor::from_slice(&[0i64, 1, 2]);
        Tensor::write_safetensors(&[("bias", &ints), ("position_ids", &pos)], &path).unwrap();
        let w = Weights::open(std::slice::from_ref(&path), Device::Cpu, Kind::Float).unwrap();
        let e = w.get("bias", &[3]).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("'bias'") && e.contains("I32"), "{e}");
        assert!(w.get("position_ids", &[3]).is_ok(), "integer buffers stay readable");
    }
}
