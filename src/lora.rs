//! LoRA adapters: reading kohya, diffusers/PEFT and LyCORIS (LoHa, LoKr) `.safetensors`
//! files into per-layer weight deltas, and patching them into a loaded pipeline's UNet and
//! text encoders, and out again, without reloading the model.
//!
//! The deltas, with `w` the requested weight:
//! - LoRA (kohya `lora_down`/`lora_up`/`alpha`, PEFT `lora_A`/`lora_B`):
//!   `ΔW = w · alpha/rank · up·down`, `rank = down.shape[0]`; no alpha means scale 1 (as
//!   diffusers, which reads PEFT files without alphas with `lora_alpha = r`, and A1111). A
//!   convolution's `down` may be `k×k` (LoCon) with a 1×1 `up`: `up·down` is computed on the
//!   flattened kernels and reshaped to `[out, in, k, k]`, which is what running the two
//!   convolutions in a row computes.
//! - LoHa: `ΔW = w · alpha/rank · (w1_a·w1_b) ⊙ (w2_a·w2_b)`, `rank = w1_b.shape[0]`.
//! - LoKr: `ΔW = w · scale · kron(w1, w2)`, each of `w1`/`w2` stored whole or as an `_a·_b`
//!   pair; `scale = alpha/rank` with the inner size of a factored pair, else 1 (A1111's
//!   `network_lokr.py`).
//!
//! Patched layers get new tensors (the loaded ones may be read-only mapped files); the
//! originals are kept and put back when the set of LoRAs changes.

use crate::models::clip::ClipTextModel;
use crate::models::conv::KernelSnapshot;
use crate::models::layers::LayerMut;
use crate::models::UNet;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One LoRA to apply: its file and its weight (A1111's multiplier).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRequest {
    pub path: PathBuf,
    pub weight: f64,
}

/// What applying one file did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraReport {
    pub path: PathBuf,
    /// "kohya", "peft", "loha", "lokr" or a mix joined by "+".
    pub format: String,
    /// Modules (layers) of the file that were applied.
    pub applied: usize,
    /// Modules of the file that match no layer of this model.
    pub unmatched: Vec<String>,
}

/// Which network a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Target {
    Unet,
    TextEncoder,
    TextEncoder2,
}

/// The networks a LoRA can patch.
pub(crate) struct Models<'a> {
    pub unet: &'a mut UNet,
    pub text_encoder: &'a mut ClipTextModel,
    pub text_encoder_2: Option<&'a mut ClipTextModel>,
}

impl Models<'_> {
    fn visit(&mut self, f: &mut dyn FnMut(Target, &str, LayerMut<'_>)) {
        self.unet.visit_layers(&mut |n, l| f(Target::Unet, n, l));
        self.text_encoder.visit_layers(&mut |n, l| f(Target::TextEncoder, n, l));
        if let Some(te) = self.text_encoder_2.as_deref_mut() {
            te.visit_layers(&mut |n, l| f(Target::TextEncoder2, n, l));
        }
    }
}

/// A module of a LoRA file: where it goes (`key` is the layer's diffusers name with `_` for
/// `.`, as kohya writes it) and its delta at weight 1, `[out, in·k·k]` fp32 on the CPU.
struct Module {
    target: Option<Target>,
    key: String,
    name: String,
    format: &'static str,
    delta: Tensor,
}

/// The state a pipeline keeps: what is applied and the weights it replaced.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    requests: Vec<LoraRequest>,
    reports: Vec<LoraReport>,
    originals: HashMap<(Target, String), Original>,
}

#[derive(Debug)]
enum Original {
    Linear(Tensor),
    Conv(KernelSnapshot),
}

impl Applied {
    pub(crate) fn requests(&self) -> &[LoraRequest] {
        &self.requests
    }

    /// Makes `requests` the applied set. Every file is read and checked before any weight
    /// changes, so on error the models keep the set they had.
    pub(crate) fn set(&mut self, mut models: Models<'_>, requests: &[LoraRequest]) -> Result<Vec<LoraReport>> {
        if requests == self.requests.as_slice() {
            return Ok(self.reports.clone());
        }
        // Layer shapes by (target, kohya key).
        let mut layers: HashMap<(Target, String), (String, Vec<i64>)> = HashMap::new();
        models.visit(&mut |t, name, layer| {
            let shape = match layer {
                LayerMut::Linear(l) => l.weight.size(),
                LayerMut::Conv(c) => c.kernel_shape().to_vec(),
            };
            layers.insert((t, name.replace('.', "_")), (name.to_string(), shape));
        });
        // kohya's SDXL LoRAs (and some SD 1.x ones) name the UNet's modules as the original
        // checkpoints do: accept those names too.
        let unet_names: Vec<String> =
            layers.iter().filter(|((t, _), _)| *t == Target::Unet).map(|(_, (name, _))| name.clone()).collect();
        for (ldm, name) in ldm_aliases(&unet_names) {
            if let Some(l) = layers.get(&(Target::Unet, name.replace('.', "_"))).cloned() {
                layers.entry((Target::Unet, ldm.replace('.', "_"))).or_insert(l);
            }
        }
        let mut sums: BTreeMap<(Target, String), Tensor> = BTreeMap::new();
        let mut reports = Vec::new();
        for r in requests {
            let modules = read_modules(&r.path)?;
            let mut formats: Vec<&str> = Vec::new();
            let (mut applied, mut unmatched) = (0, Vec::new());
            for m in modules {
                if !formats.contains(&m.format) {
                    formats.push(m.format);
                }
                let found = m.target.and_then(|t| layers.get(&(t, m.key.clone())).map(|l| (t, l)));
                let Some((t, (name, shape))) = found else {
                    unmatched.push(m.name);
                    continue;
                };
                let numel: i64 = shape.iter().product();
                let ds = m.delta.size();
                if ds[0] != shape[0] || m.delta.numel() as i64 != numel {
                    return Err(Error::weights(
                        &r.path,
                        format!(
                            "LoRA module '{}' is {ds:?} but the model's layer '{name}' is {shape:?}: \
                             this LoRA is for another model architecture",
                            m.name
                        ),
                    ));
                }
                let d = m.delta.reshape(shape.as_slice()) * r.weight;
                let key = (t, name.clone());
                let d = match sums.remove(&key) {
                    Some(prev) => prev + d,
                    None => d,
                };
                sums.insert(key, d);
                applied += 1;
            }
            if applied == 0 {
                return Err(Error::weights(
                    &r.path,
                    format!(
                        "none of its {} LoRA modules matches a layer of this model (for another model family?)",
                        unmatched.len()
                    ),
                ));
            }
            if !unmatched.is_empty() {
                log::warn!(
                    "{}: {} LoRA modules match no layer and are ignored: {}",
                    r.path.display(),
                    unmatched.len(),
                    unmatched.join(", ")
                );
            }
            reports.push(LoraReport { path: r.path.clone(), format: formats.join("+"), applied, unmatched });
        }
        self.restore(&mut models);
        let originals = &mut self.originals;
        models.visit(&mut |t, name, layer| {
            let Some(d) = sums.get(&(t, name.to_string())) else { return };
            match layer {
                LayerMut::Linear(l) => {
                    let w = &l.weight;
                    let patched = (w.to_kind(Kind::Float) + d.to_device(w.device())).to_kind(w.kind());
                    let old = std::mem::replace(&mut l.weight, patched);
                    originals.insert((t, name.to_string()), Original::Linear(old));
                }
                LayerMut::Conv(c) => {
                    originals.insert((t, name.to_string()), Original::Conv(c.snapshot()));
                    c.add_delta(d);
                }
            }
        });
        self.requests = requests.to_vec();
        self.reports = reports.clone();
        Ok(reports)
    }

    /// Puts back every weight a LoRA replaced.
    fn restore(&mut self, models: &mut Models<'_>) {
        let originals = &mut self.originals;
        if originals.is_empty() {
            return;
        }
        models.visit(&mut |t, name, layer| {
            let Some(o) = originals.remove(&(t, name.to_string())) else { return };
            match (layer, o) {
                (LayerMut::Linear(l), Original::Linear(w)) => l.weight = w,
                (LayerMut::Conv(c), Original::Conv(k)) => c.restore(k),
                // A layer is always visited as the same kind.
                _ => {}
            }
        });
        self.requests.clear();
        self.reports.clear();
    }
}

/// Takes A1111's `<lora:NAME>` and `<lora:NAME:WEIGHT>` tags out of a prompt: the prompt
/// without them (each tag replaced by nothing, as A1111 does) and the (name, weight) pairs in
/// order; the weight defaults to 1. A tag whose weight is not a number stays in the text.
pub fn extract_prompt_loras(prompt: &str) -> (String, Vec<(String, f64)>) {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let after = &rest[start + "<lora:".len()..];
        let Some(end) = after.find('>') else { break };
        let body = &after[..end];
        let parsed = match body.split(':').collect::<Vec<_>>().as_slice() {
            [name] => Some((name.trim().to_string(), 1.0)),
            // A1111 accepts `<lora:name:te_weight:unet_weight>`; the first weight is the one kept.
            [name, weight, ..] => weight.trim().parse::<f64>().ok().map(|w| (name.trim().to_string(), w)),
            [] => None,
        };
        match parsed.filter(|(n, w)| !n.is_empty() && w.is_finite()) {
            Some(l) => {
                text.push_str(&rest[..start]);
                loras.push(l);
            }
            None => text.push_str(&rest[..start + "<lora:".len() + end + 1]),
        }
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    (text, loras)
}

/// `FILE[:WEIGHT]` (the command line's `--lora`, a batch line's `lora`): the text after the
/// last ':' is the weight when it is a number, so a name or path with colons stays whole.
pub fn parse_lora_arg(arg: &str) -> (String, f64) {
    match arg.rsplit_once(':') {
        Some((file, w)) if !file.is_empty() => match w.trim().parse::<f64>() {
            Ok(weight) => (file.trim().to_string(), weight),
            Err(_) => (arg.trim().to_string(), 1.0),
        },
        _ => (arg.trim().to_string(), 1.0),
    }
}

/// The record of a LoRA named `name` (a path, or a file stem looked up as
/// `<dir>/<name>.safetensors`) at `weight`, with its sha256.
pub fn resolve(name: &str, weight: f64, dir: Option<&Path>) -> Result<crate::request::LoraRecord> {
    let given = PathBuf::from(name);
    let path = if given.is_file() {
        given
    } else {
        let Some(dir) = dir else {
            return Err(Error::invalid(format!(
                "LoRA '{name}' not found: it is not a file, and no LoRA folder is set (--lora-dir or $SDGEN_LORA_DIR)"
            )));
        };
        let candidate = dir.join(format!("{name}.safetensors"));
        if !candidate.is_file() {
            let pickle = ["pt", "ckpt"].iter().map(|e| dir.join(format!("{name}.{e}"))).find(|p| p.is_file());
            if let Some(p) = pickle {
                refuse_pickle(&p)?;
            }
            return Err(Error::invalid(format!("LoRA '{name}' not found: no {}", candidate.display())));
        }
        candidate
    };
    if !weight.is_finite() {
        return Err(Error::invalid(format!("LoRA '{name}': weight {weight} is not a number")));
    }
    refuse_pickle(&path)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(name).to_string();
    let sha256 = crate::loading::hash::sha256_file_cached(&path)?;
    Ok(crate::request::LoraRecord { name: stem, weight, sha256, path })
}

/// The original (LDM/SGM) name of each of the UNet's layers, given their diffusers names:
/// `(ldm, diffusers)` pairs. The structure (resnets per level, which levels have attention,
/// down- and upsamplers) is read off the names. The numbering is the original UNet's:
/// `input_blocks.0` is `conv_in`, then each level's (resnet, attention) pairs and its
/// downsampler (`…op`); `middle_block.{0,1,2}`; `output_blocks` count each up level's resnets,
/// the last of which also holds the upsampler (`.1.conv`, or `.2.conv` after an attention).
fn ldm_aliases(names: &[String]) -> Vec<(String, String)> {
    let index_after =
        |name: &str, prefix: &str| -> Option<usize> { name.strip_prefix(prefix)?.split('.').next()?.parse().ok() };
    // (resnets, has attentions, has resampler) per level, down and up.
    let mut down: BTreeMap<usize, (usize, bool, bool)> = BTreeMap::new();
    let mut up: BTreeMap<usize, (usize, bool, bool)> = BTreeMap::new();
    for n in names {
        for (prefix, levels) in [("down_blocks.", &mut down), ("up_blocks.", &mut up)] {
            let Some(i) = index_after(n, prefix) else { continue };
            let rest = &n[prefix.len() + i.to_string().len() + 1..];
            let level = levels.entry(i).or_default();
            if let Some(j) = index_after(rest, "resnets.") {
                level.0 = level.0.max(j + 1);
            }
            level.1 |= rest.starts_with("attentions.");
            level.2 |= rest.starts_with("downsamplers.") || rest.starts_with("upsamplers.");
        }
    }
    let resnet_part = |rest: &str| -> String {
        let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let layer = match layer {
            "conv1" => "in_layers.2",
            "conv2" => "out_layers.3",
            "time_emb_proj" => "emb_layers.1",
            "conv_shortcut" => "skip_connection",
            other => other,
        };
        if tail.is_empty() {
            layer.to_string()
        } else {
            format!("{layer}.{tail}")
        }
    };
    let fixed = [
        ("conv_in", "input_blocks.0.0"),
        ("conv_out", "out.2"),
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
    ];
    let mut out = Vec::new();
    for n in names {
        if let Some((_, ldm)) = fixed.iter().find(|(d, _)| d == n) {
            out.push((ldm.to_string(), n.clone()));
            continue;
        }
        let parts: Vec<&str> = n.splitn(5, '.').collect();
        let num = |k: usize| parts.get(k).and_then(|p| p.parse::<usize>().ok());
        let ldm = match (parts.first().copied(), num(1), parts.get(2).copied(), num(3)) {
            (Some("down_blocks"), Some(i), Some(kind), j) => {
                let start = 1 + down.range(..i).map(|(_, l)| l.0 + usize::from(l.2)).sum::<usize>();
                let per = down.get(&i).map_or(0, |l| l.0);
                match (kind, j, parts.get(4)) {
                    ("resnets", Some(j), Some(rest)) => {
                        Some(format!("input_blocks.{}.0.{}", start + j, resnet_part(rest)))
                    }
                    ("attentions", Some(j), Some(rest)) => Some(format!("input_blocks.{}.1.{rest}", start + j)),
                    ("downsamplers", Some(0), Some(&"conv")) => Some(format!("input_blocks.{}.0.op", start + per)),
                    _ => None,
                }
            }
            (Some("up_blocks"), Some(i), Some(kind), j) => {
                let start = up.range(..i).map(|(_, l)| l.0).sum::<usize>();
                let (per, attn) = up.get(&i).map_or((0, false), |l| (l.0, l.1));
                match (kind, j, parts.get(4)) {
                    ("resnets", Some(j), Some(rest)) => {
                        Some(format!("output_blocks.{}.0.{}", start + j, resnet_part(rest)))
                    }
                    ("attentions", Some(j), Some(rest)) => Some(format!("output_blocks.{}.1.{rest}", start + j)),
                    ("upsamplers", Some(0), Some(&"conv")) if per > 0 => {
                        Some(format!("output_blocks.{}.{}.conv", start + per - 1, 1 + usize::from(attn)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let ldm = ldm.or_else(|| {
            let (kind, rest) = n.strip_prefix("mid_block.")?.split_once('.')?;
            let (j, rest) = rest.split_once('.')?;
            match (kind, j) {
                ("resnets", "0") => Some(format!("middle_block.0.{}", resnet_part(rest))),
                ("attentions", "0") => Some(format!("middle_block.1.{rest}")),
                ("resnets", "1") => Some(format!("middle_block.2.{}", resnet_part(rest))),
                _ => None,
            }
        });
        if let Some(ldm) = ldm {
            out.push((ldm, n.clone()));
        }
    }
    out
}

/// Reads a LoRA file into its modules. Pickles are refused: loading one runs code.
fn read_modules(path: &Path) -> Result<Vec<Module>> {
    refuse_pickle(path)?;
    if !path.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such LoRA file")));
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| Error::weights(path, format!("not a LoRA file: {e}")))?;
    let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
    let peft = PeftAlphas::read(path)?;
    parse(path, &tensors, &peft)
}

/// diffusers' `lora_adapter_metadata` header entry: each component's PEFT `LoraConfig`,
/// flattened as `unet.lora_alpha`, `unet.alpha_pattern`, `text_encoder.lora_alpha`, ...
/// diffusers scales a PEFT module by `alpha / rank`, `alpha` from `alpha_pattern` (a key
/// matching the module name's end, PEFT's `(.*\.)?(key)$`) or else `lora_alpha`.
#[derive(Debug, Default)]
struct PeftAlphas {
    /// Per component prefix (`unet`, `text_encoder`, `text_encoder_2`): `lora_alpha` and the
    /// `alpha_pattern` entries.
    by_prefix: HashMap<String, ComponentAlphas>,
}

/// One component's `lora_alpha` and its `alpha_pattern` (key as a regex, alpha).
type ComponentAlphas = (Option<f64>, Vec<(regex::Regex, f64)>);

impl PeftAlphas {
    fn read(path: &Path) -> Result<PeftAlphas> {
        // Only the header: the tensors were read already.
        use std::io::Read;
        let bad = |what: String| Error::weights(path, format!("lora_adapter_metadata: {what}"));
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(Error::weights(path, format!("not a LoRA file: a {len}-byte safetensors header")));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| Error::weights(path, format!("not a LoRA file: its header is not JSON ({e})")))?;
        let Some(raw) = header.pointer("/__metadata__/lora_adapter_metadata").and_then(|v| v.as_str()) else {
            return Ok(PeftAlphas::default());
        };
        let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| bad(format!("not JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let mut out = PeftAlphas::default();
        for (key, value) in obj {
            let Some((prefix, field)) = key.split_once('.') else { continue };
            let entry = out.by_prefix.entry(prefix.to_string()).or_default();
            match field {
                "lora_alpha" => entry.0 = value.as_f64(),
                "alpha_pattern" => {
                    for (pattern, alpha) in value.as_object().into_iter().flatten() {
                        let re = regex::Regex::new(&format!(r"^(.*\.)?({pattern})$"))
                            .map_err(|e| bad(format!("alpha_pattern key '{pattern}': {e}")))?;
                        let alpha =
                            alpha.as_f64().ok_or_else(|| bad(format!("alpha of '{pattern}' is not a number")))?;
                        entry.1.push((re, alpha));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The alpha of a PEFT module (`unet.down_blocks.0...to_q`), if the metadata gives one.
    fn alpha(&self, module: &str) -> Option<f64> {
        let (prefix, rest) = module.split_once('.')?;
        let (lora_alpha, patterns) = self.by_prefix.get(prefix)?;
        patterns.iter().find(|(re, _)| re.is_match(rest)).map(|(_, a)| *a).or(*lora_alpha)
    }
}

/// Pickles are refused by their extension, before a model is loaded.
fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "pt" | "ckpt" | "pth" | "bin") {
        return Err(Error::weights(
            path,
            "LoRA files in PyTorch's pickle format are not read (loading a pickle can run code); convert it \
             to .safetensors, e.g. in Python: safetensors.torch.save_file(torch.load(f, weights_only=True), \
             'lora.safetensors')",
        ));
    }
    Ok(())
}

/// Splits a tensor name into (module, parameter): PEFT's `….lora_A.weight`, kohya's
/// `<module>.<parameter>`.
fn split_key(key: &str) -> (String, String) {
    for suffix in [".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight"] {
        if let Some(m) = key.strip_suffix(suffix) {
            if m.starts_with("unet.") || m.starts_with("text_encoder") || !m.contains('.') {
                return (m.to_string(), suffix[1..].to_string());
            }
        }
    }
    if let Some(m) = key.strip_suffix(".alpha") {
        return (m.to_string(), "alpha".to_string());
    }
    match key.split_once('.') {
        Some((m, p)) => (m.to_string(), p.to_string()),
        None => (key.to_string(), String::new()),
    }
}

/// (target, kohya key) of a module name.
fn locate(module: &str) -> (Option<Target>, String) {
    let kohya = [
        ("lora_unet_", Target::Unet),
        ("lora_te1_", Target::TextEncoder),
        ("lora_te2_", Target::TextEncoder2),
        ("lora_te_", Target::TextEncoder),
    ];
    for (p, t) in kohya {
        if let Some(rest) = module.strip_prefix(p) {
            return (Some(t), rest.to_string());
        }
    }
    let peft =
        [("unet.", Target::Unet), ("text_encoder_2.", Target::TextEncoder2), ("text_encoder.", Target::TextEncoder)];
    for (p, t) in peft {
        if let Some(rest) = module.strip_prefix(p) {
            return (Some(t), rest.replace('.', "_"));
        }
    }
    (None, module.to_string())
}

fn parse(path: &Path, tensors: &HashMap<String, Tensor>, peft: &PeftAlphas) -> Result<Vec<Module>> {
    let mut by_module: BTreeMap<String, HashMap<String, &Tensor>> = BTreeMap::new();
    for (k, t) in tensors {
        let (m, p) = split_key(k);
        by_module.entry(m).or_default().insert(p, t);
    }
    let bad = |m: &str, what: String| Error::weights(path, format!("LoRA module '{m}': {what}"));
    let mut out = Vec::new();
    for (name, p) in &by_module {
        let f32 = |k: &str| p.get(k).map(|t| t.to_device(Device::Cpu).to_kind(Kind::Float));
        let alpha = match p.get("alpha") {
            Some(a) if a.numel() == 1 => Some(a.to_kind(Kind::Double).double_value(&[])),
            Some(_) => return Err(bad(name, "alpha is not a single number".into())),
            // PEFT files saved by diffusers keep their alphas in the header's metadata.
            None if p.contains_key("lora_A.weight") => peft.alpha(name),
            None => None,
        };
        let scale = |rank: i64| match alpha {
            Some(a) if rank > 0 => a / rank as f64,
            _ => 1.0,
        };
        let (format, delta) = if let (Some(down), Some(up)) = (
            f32("lora_down.weight").or_else(|| f32("lora_A.weight")),
            f32("lora_up.weight").or_else(|| f32("lora_B.weight")),
        ) {
            let format = if p.contains_key("lora_A.weight") { "peft" } else { "kohya" };
            if p.contains_key("lora_mid.weight") {
                return Err(bad(name, "LoCon with a Tucker 'lora_mid' is not supported".into()));
            }
            let (ds, us) = (down.size(), up.size());
            let rank = ds[0];
            if us.len() < 2 || us[1] != rank || us[2..].iter().any(|&k| k != 1) {
                return Err(bad(name, format!("up {us:?} does not fit down {ds:?}")));
            }
            let d = up.reshape([us[0], rank]).matmul(&down.reshape([rank, -1])) * scale(rank);
            (format, d)
        } else if p.contains_key("hada_w1_a") {
            if p.contains_key("hada_t1") || p.contains_key("hada_t2") {
                return Err(bad(name, "LoHa with Tucker factors (hada_t1/hada_t2) is not supported".into()));
            }
            let get = |k: &str| f32(k).ok_or_else(|| bad(name, format!("LoHa lacks {k}")));
            let (w1a, w1b, w2a, w2b) = (get("hada_w1_a")?, get("hada_w1_b")?, get("hada_w2_a")?, get("hada_w2_b")?);
            let rank = w1b.size()[0];
            let a = w1a.matmul(&w1b.reshape([rank, -1]));
            let b = w2a.matmul(&w2b.reshape([w2b.size()[0], -1]));
            if a.size() != b.size() {
                return Err(bad(name, format!("LoHa halves {:?} and {:?} differ", a.size(), b.size())));
            }
            ("loha", a * b * scale(rank))
        } else if p.keys().any(|k| k.starts_with("lokr_")) {
            if p.contains_key("lokr_t2") {
                return Err(bad(name, "LoKr with a Tucker factor (lokr_t2) is not supported".into()));
            }
            let factor = |w: &str| -> Result<(Tensor, Option<i64>)> {
                if let Some(t) = f32(w) {
                    return Ok((t, None));
                }
                match (f32(&format!("{w}_a")), f32(&format!("{w}_b"))) {
                    (Some(a), Some(b)) => {
                        let r = b.size()[0];
                        Ok((a.matmul(&b.reshape([r, -1])), Some(r)))
                    }
                    _ => Err(bad(name, format!("LoKr lacks {w} (or {w}_a and {w}_b)"))),
                }
            };
            let (w1, r1) = factor("lokr_w1")?;
            let (w2, r2) = factor("lokr_w2")?;
            let rank = r1.or(r2).unwrap_or(0);
            // kron on [a, b] and [c, d(·k·k)] gives [a·c, b·d(·k·k)]: flattened as the other formats.
            let w2 = if w2.dim() > 2 { w2.reshape([w2.size()[0], -1]) } else { w2 };
            if w1.dim() != 2 {
                return Err(bad(name, format!("LoKr w1 of shape {:?} is not a matrix", w1.size())));
            }
            ("lokr", w1.kron(&w2) * scale(rank))
        } else if p.contains_key("dora_scale") {
            return Err(bad(name, "DoRA is not supported".into()));
        } else if p.len() == 1 && p.contains_key("alpha") {
            // An alpha without weights (some trainers write them for skipped layers).
            continue;
        } else {
            let keys: Vec<&String> = p.keys().collect();
            return Err(bad(name, format!("unknown LoRA parameters {keys:?}")));
        };
        let (target, key) = locate(name);
        out.push(Module { target, key, name: name.clone(), format, delta });
    }
    if out.is_empty() {
        return Err(Error::weights(path, "holds no LoRA tensors"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_and_peft_names_locate_their_layers() {
        let (t, k) = locate("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
        assert_eq!((t, k.as_str()), (Some(Target::Unet), "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"));
        assert_eq!(locate("lora_te2_text_model_encoder_layers_0_mlp_fc1").0, Some(Target::TextEncoder2));
        let (t, k) = locate("text_encoder.text_model.encoder.layers.0.self_attn.q_proj");
        assert_eq!((t, k.as_str()), (Some(Target::TextEncoder), "text_model_encoder_layers_0_self_attn_q_proj"));
        assert_eq!(split_key("unet.a.b.lora_A.weight"), ("unet.a.b".into(), "lora_A.weight".into()));
        assert_eq!(split_key("lora_te_x.hada_w1_a"), ("lora_te_x".into(), "hada_w1_a".into()));
    }

    #[test]
    fn prompt_tags_are_taken_out_with_their_weights() {
        let (p, l) = extract_prompt_loras("a cat <lora:style:0.8>, <lora:detail> on a mat");
        assert_eq!(p, "a cat ,  on a mat");
        assert_eq!(l, vec![("style".to_string(), 0.8), ("detail".to_string(), 1.0)]);
        let (p, l) = extract_prompt_loras("<lora:a:0.5:0.2>x <lora:b:heavy> <lora:unclosed");
        assert_eq!(l, vec![("a".to_string(), 0.5)]);
        assert_eq!(p, "x <lora:b:heavy> <lora:unclosed");
        assert_eq!(extract_prompt_loras("plain").0, "plain");
    }

    #[test]
    fn lora_arguments_split_off_a_numeric_weight_only() {
        assert_eq!(parse_lora_arg("style.safetensors:0.7"), ("style.safetensors".to_string(), 0.7));
        assert_eq!(parse_lora_arg("style"), ("style".to_string(), 1.0));
        assert_eq!(parse_lora_arg("C:/loras/style"), ("C:/loras/style".to_string(), 1.0));
        assert_eq!(parse_lora_arg("a:b:-0.5"), ("a:b".to_string(), -0.5));
    }

    #[test]
    fn unet_layers_have_their_original_checkpoint_names() {
        // SD 1.5's layout: two resnets a level, attention on the first three levels down and
        // the last three up, no downsampler on the last level nor upsampler on the last up.
        let mut names = Vec::new();
        for i in 0..4 {
            for j in 0..2 {
                names.push(format!("down_blocks.{i}.resnets.{j}.conv1"));
                if i < 3 {
                    names.push(format!("down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1.to_q"));
                }
            }
            if i < 3 {
                names.push(format!("down_blocks.{i}.downsamplers.0.conv"));
            }
            for j in 0..3 {
                names.push(format!("up_blocks.{i}.resnets.{j}.time_emb_proj"));
                if i > 0 {
                    names.push(format!("up_blocks.{i}.attentions.{j}.proj_in"));
                }
            }
            if i < 3 {
                names.push(format!("up_blocks.{i}.upsamplers.0.conv"));
            }
        }
        names.extend(["mid_block.resnets.1.conv_shortcut".to_string(), "mid_block.attentions.0.proj_out".to_string()]);
        let map: HashMap<String, String> = ldm_aliases(&names).into_iter().map(|(l, d)| (d, l)).collect();
        let ldm = |d: &str| map.get(d).map(String::as_str);
        assert_eq!(ldm("down_blocks.0.resnets.0.conv1"), Some("input_blocks.1.0.in_layers.2"));
        assert_eq!(
            ldm("down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"),
            Some("input_blocks.5.1.transformer_blocks.0.attn1.to_q")
        );
        assert_eq!(ldm("down_blocks.2.downsamplers.0.conv"), Some("input_blocks.9.0.op"));
        assert_eq!(ldm("down_blocks.3.resnets.1.conv1"), Some("input_blocks.11.0.in_layers.2"));
        assert_eq!(ldm("up_blocks.0.resnets.2.time_emb_proj"), Some("output_blocks.2.0.emb_layers.1"));
        assert_eq!(ldm("up_blocks.0.upsamplers.0.conv"), Some("output_blocks.2.1.conv"));
        assert_eq!(ldm("up_blocks.1.upsamplers.0.conv"), Some("output_blocks.5.2.conv"));
        assert_eq!(ldm("up_blocks.3.attentions.2.proj_in"), Some("output_blocks.11.1.proj_in"));
        assert_eq!(ldm("mid_block.resnets.1.conv_shortcut"), Some("middle_block.2.skip_connection"));
        assert_eq!(ldm("mid_block.attentions.0.proj_out"), Some("middle_block.1.proj_out"));
    }

    #[test]
    fn lokr_is_a_kronecker_product() {
        let w1 = Tensor::from_slice(&[1f32, 2., 3., 4.]).reshape([2, 2]);
        let w2 = Tensor::from_slice(&[1f32, 0., 0., 1.]).reshape([2, 2]);
        let mut t = HashMap::new();
        t.insert("lora_unet_x.lokr_w1".to_string(), w1);
        t.insert("lora_unet_x.lokr_w2".to_string(), w2);
        t.insert("lora_unet_x.alpha".to_string(), Tensor::from(8f32));
        let m = parse(Path::new("x.safetensors"), &t, &PeftAlphas::default()).unwrap();
        // Neither factored: scale 1 whatever alpha says.
        let want = [1f32, 0., 2., 0., 0., 1., 0., 2., 3., 0., 4., 0., 0., 3., 0., 4.];
        assert_eq!(Vec::<f32>::try_from(m[0].delta.view([-1])).unwrap(), want);
    }
}
