//! What other tools (and sdgen itself) left in an image: sdgen's record, an A1111
//! `parameters` text or a ComfyUI prompt graph, read into settings for `generate --from` and
//! into a short summary for `sdgen show`.
//!
//! A1111 texts are split by A1111's own rules ([`parse_parameters`]); sampler and schedule
//! names go through the scheduler table, with A1111's "Automatic" schedule meaning what it
//! means in A1111 (Karras for DPM++ 2M, exponential for DPM++ 2M SDE, ...).

use crate::output::{metadata, parse_parameters, read_text_chunks, ParsedParameters};
use crate::plan::Settings;
use crate::schedulers::{self, SigmaSchedule};
use crate::{Error, Record, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// What an image (or a pasted text file) says about how it was made.
#[derive(Debug, Clone)]
pub enum Source {
    /// sdgen's own record (the `sdgen` chunk), with the `parameters` text beside it.
    Sdgen { record: Box<Record>, parameters: Option<String> },
    /// An A1111-style `parameters` text (A1111, Forge, sd.cpp, civitai, or pasted).
    A1111 { parameters: String },
    /// ComfyUI's API-format `prompt` graph.
    ComfyUi { prompt: Value },
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// A pasted parameters text is small; anything larger is not one.
const MAX_TEXT_LEN: u64 = 1 << 20;

impl Source {
    /// Reads a PNG's text chunks, or a text file holding a pasted `parameters` text.
    pub fn read(path: &Path) -> Result<Source> {
        let mut head = [0u8; 8];
        let is_png = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            f.read_exact(&mut head).is_ok() && &head == PNG_SIGNATURE
        };
        if !is_png {
            let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
            if len > MAX_TEXT_LEN {
                return Err(Error::invalid(format!(
                    "{} is neither a PNG nor a parameters text file (it is {len} bytes)",
                    path.display()
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::invalid(format!(
                    "{} is neither a PNG nor a UTF-8 text file with an A1111 `parameters` text",
                    path.display()
                ))
            })?;
            let text = text.trim_start_matches('\u{feff}').to_string();
            let parsed = parse_parameters(&text).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
            // Any text splits into a prompt; a pasted A1111 text also has its settings line.
            if parsed.params.is_empty() {
                return Err(Error::invalid(format!(
                    "{} is neither a PNG nor an A1111 parameters text: it has no `Steps: 20, Sampler: ..., Seed: ...` \
                     line",
                    path.display()
                )));
            }
            return Ok(Source::A1111 { parameters: text });
        }
        let chunks = read_text_chunks(path)?;
        let get = |key: &str| chunks.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let parameters = get(metadata::PARAMETERS_KEY);
        if get(metadata::RECORD_KEY).is_some() {
            let record = metadata::read_record(path)?;
            return Ok(Source::Sdgen { record: Box::new(record), parameters });
        }
        if let Some(parameters) = parameters {
            return Ok(Source::A1111 { parameters });
        }
        if let Some(prompt) = get("prompt") {
            if let Ok(prompt @ Value::Object(_)) = serde_json::from_str::<Value>(&prompt) {
                return Ok(Source::ComfyUi { prompt });
            }
        }
        Err(Error::invalid(format!(
            "{} carries no generation record (no `sdgen`, A1111 `parameters` or ComfyUI `prompt` text chunk); \
             its metadata may have been stripped",
            path.display()
        )))
    }

    /// Which tool's record this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Sdgen { .. } => "sdgen",
            Source::A1111 { .. } => "A1111",
            Source::ComfyUi { .. } => "ComfyUI",
        }
    }
}

/// Settings read from an A1111 text, and what could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    pub settings: Settings,
    /// Fields sdgen does not understand, or values it cannot honour, each with why.
    pub warnings: Vec<String>,
    /// Set when the sampler has no sdgen equivalent: the run needs `--scheduler` then.
    pub sampler_error: Option<String>,
}

/// Fields that are read, or known and deliberately not used.
const USED: &[&str] = &[
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Clip skip",
    "Denoising strength",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Version",
    "RNG",
];

/// Reads an A1111 `parameters` text into settings: prompt, negative prompt, steps, sampler
/// and schedule, CFG scale, seed, size, clip skip and denoising strength. The model is not
/// taken from the text (A1111 names a file on its machine); other fields are warned about.
pub fn from_parameters(text: &str) -> Result<Imported> {
    let p = parse_parameters(text)?;
    let mut out = Imported::default();
    let mut s = Settings { prompt: Some(p.prompt.clone()), num_images: Some(1), ..Settings::default() };
    let from_sdgen = p.get("Version").is_some_and(|v| v.starts_with("sdgen"));
    // sdgen writes an empty line for "no negative prompt", which SDXL tells from "".
    s.negative_prompt = p.negative_prompt.clone().filter(|n| !(from_sdgen && n.is_empty()));
    let mut bad = |key: &str, value: &str, why: &str| out.warnings.push(format!("{key}: {value:?} {why}; ignored"));
    if let Some(v) = p.get("Steps") {
        match v.trim().parse::<usize>() {
            Ok(n) => s.steps = Some(n),
            Err(_) => bad("Steps", v, "is not a whole number"),
        }
    }
    if let Some(v) = p.get("CFG scale") {
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => s.guidance = Some(x),
            _ => bad("CFG scale", v, "is not a number"),
        }
    }
    if let Some(v) = p.get("Seed") {
        // A1111 seeds are at most 2^32 - 1, but sdgen takes any u64.
        match v.trim().parse::<u64>() {
            Ok(n) => s.seed = Some(n),
            Err(_) => bad("Seed", v, "is not a seed sdgen can use"),
        }
    }
    if let Some(v) = p.get("Size") {
        match v.trim().split_once('x').map(|(w, h)| (w.trim().parse::<u32>(), h.trim().parse::<u32>())) {
            Some((Ok(w), Ok(h))) => (s.width, s.height) = (Some(w), Some(h)),
            _ => bad("Size", v, "is not WIDTHxHEIGHT"),
        }
    }
    if let Some(v) = p.get("Clip skip") {
        match v.trim().parse::<usize>() {
            Ok(n) => s.clip_skip = Some(n),
            Err(_) => bad("Clip skip", v, "is not a whole number"),
        }
    }
    if let Some(v) = p.get("Denoising strength") {
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => s.strength = Some(x),
            _ => bad("Denoising strength", v, "is not a number"),
        }
    }
    if let Some(v) = p.get("RNG").filter(|v| !v.trim().eq_ignore_ascii_case("CPU")) {
        out.warnings.push(format!(
            "RNG: {v}: sdgen draws noise as torch's CPU generator, so the image will differ from one made with {v} noise"
        ));
    }
    if let Some(sampler) = p.get("Sampler") {
        match a1111_sampler(sampler, p.get("Schedule type")) {
            Ok((name, warning)) => {
                s.scheduler = Some(name);
                out.warnings.extend(warning);
            }
            Err(e) => out.sampler_error = Some(e),
        }
    }
    // Like the model, the VAE names a file on the other machine: said, not used.
    if let Some(vae) = p.get("VAE").or_else(|| p.get("VAE hash")) {
        out.warnings.push(format!(
            "VAE: the image was made with the VAE {vae:?}; sdgen uses the model's own unless you pass --vae"
        ));
    }
    let unknown: Vec<&str> = p.params.iter().map(|(k, _)| k.as_str()).filter(|k| !USED.contains(k)).collect();
    if !unknown.is_empty() {
        out.warnings.push(format!("not understood, ignored: {}", unknown.join(", ")));
    }
    out.settings = s;
    Ok(out)
}

/// The sigma schedule A1111's "Automatic" picks for a sampler (the `scheduler` option of its
/// k-diffusion sampler table); `Default` for samplers without one.
fn a1111_automatic(a1111_name: &str) -> SigmaSchedule {
    match a1111_name {
        "DPM++ 2M" | "DPM++ SDE" | "DPM2" | "DPM2 a" => SigmaSchedule::Karras,
        "DPM++ 2M SDE" => SigmaSchedule::Exponential,
        _ => SigmaSchedule::Default,
    }
}

/// An sdgen scheduler name for A1111's `Sampler` and `Schedule type`, read as A1111 reads
/// them: a schedule folded into the sampler name ("DPM++ 2M Karras", A1111 before 1.9) wins;
/// a missing `Schedule type` is "Automatic". Returns a warning when the schedule has no sdgen
/// equivalent (the sampler then runs on the model's own sigmas), and an error when the
/// sampler has none.
pub fn a1111_sampler(
    sampler: &str,
    schedule_type: Option<&str>,
) -> std::result::Result<(String, Option<String>), String> {
    let (info, folded) = schedulers::resolve(sampler).map_err(|_| {
        format!("A1111 sampler {sampler:?} has no sdgen equivalent (`sdgen schedulers` lists them); pass --scheduler")
    })?;
    let label = schedule_type.map(str::trim).unwrap_or("Automatic");
    let (schedule, mut warning) = match folded {
        Some(s) => (s, None),
        None => match label.to_ascii_lowercase().as_str() {
            "automatic" | "" => (a1111_automatic(info.a1111_name), None),
            "uniform" => (SigmaSchedule::Default, None),
            "karras" => (SigmaSchedule::Karras, None),
            "exponential" => (SigmaSchedule::Exponential, None),
            _ => (
                SigmaSchedule::Default,
                Some(format!(
                    "Schedule type {label:?} has no sdgen equivalent; {} runs on the model's own (Uniform) sigmas",
                    info.a1111_name
                )),
            ),
        },
    };
    let schedule = if info.supports(schedule) {
        schedule
    } else {
        warning.get_or_insert_with(|| {
            format!("{} has no {} schedule in sdgen; it runs on the model's own sigmas", info.a1111_name, label)
        });
        SigmaSchedule::Default
    };
    Ok((info.a1111_combined_name(Some(schedule)), warning))
}

/// The few facts `sdgen show` prints by default, from whichever record an image carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// `sdgen`, `A1111` or `ComfyUI`.
    pub source: String,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub sampler: Option<String>,
    pub steps: Option<String>,
    pub cfg_scale: Option<String>,
    pub seed: Option<String>,
    pub size: Option<String>,
    pub model: Option<String>,
    /// A VAE other than the model's own: its name or source and its short hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    pub license: Option<String>,
}

impl Summary {
    pub fn of(source: &Source) -> Summary {
        match source {
            Source::Sdgen { record, .. } => {
                let r = &record.request;
                let sampler = record.sampler.as_ref().map(|s| s.name.clone()).unwrap_or_else(|| r.scheduler.clone());
                Summary {
                    source: "sdgen".into(),
                    prompt: Some(r.prompt.clone()),
                    negative_prompt: r.negative_prompt.clone(),
                    sampler: Some(sampler),
                    steps: Some(r.steps.to_string()),
                    cfg_scale: Some(metadata::format_number(r.guidance)),
                    seed: Some(r.seed.to_string()),
                    size: Some(format!("{}x{}", r.width, r.height)),
                    model: Some(record.model.source.clone()),
                    vae: record.model.vae.as_ref().map(|v| {
                        format!("{} ({}, hash {})", v.source, v.class, v.sha256.chars().take(10).collect::<String>())
                    }),
                    license: Some(format!("{} ({})", record.model.license.name, record.model.license.url)),
                }
            }
            Source::A1111 { parameters } => {
                let p = parse_parameters(parameters).unwrap_or_else(|_| ParsedParameters::default());
                let get = |k: &str| p.get(k).map(str::to_string);
                let sampler = match (p.get("Sampler"), p.get("Schedule type")) {
                    (Some(s), Some(t)) => Some(format!("{s} ({t})")),
                    (s, _) => s.map(str::to_string),
                };
                Summary {
                    source: "A1111".into(),
                    prompt: Some(p.prompt.clone()),
                    negative_prompt: p.negative_prompt.clone(),
                    sampler,
                    steps: get("Steps"),
                    cfg_scale: get("CFG scale"),
                    seed: get("Seed"),
                    size: get("Size"),
                    model: get("Model").or_else(|| get("Model hash")),
                    vae: match (get("VAE"), get("VAE hash")) {
                        (Some(name), Some(hash)) => Some(format!("{name} (hash {hash})")),
                        (name, hash) => name.or(hash),
                    },
                    license: None,
                }
            }
            Source::ComfyUi { prompt } => comfy_summary(prompt),
        }
    }

    /// One `name: value` line per known fact.
    pub fn render(&self) -> String {
        let rows = [
            ("record", Some(&self.source)),
            ("prompt", self.prompt.as_ref()),
            ("negative", self.negative_prompt.as_ref()),
            ("sampler", self.sampler.as_ref()),
            ("steps", self.steps.as_ref()),
            ("cfg scale", self.cfg_scale.as_ref()),
            ("seed", self.seed.as_ref()),
            ("size", self.size.as_ref()),
            ("model", self.model.as_ref()),
            ("vae", self.vae.as_ref()),
            ("licence", self.license.as_ref()),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            if let Some(v) = value {
                // Multi-line prompts stay readable: continuation lines are indented.
                out.push_str(&format!("{:<10} {}\n", format!("{name}:"), v.replace('\n', "\n           ")));
            }
        }
        out
    }
}

/// The sampler node of a ComfyUI graph and what its links lead to: texts, latent size,
/// checkpoint. Graphs vary; what cannot be followed is left out.
fn comfy_summary(graph: &Value) -> Summary {
    let nodes = graph.as_object();
    let node = |id: &Value| -> Option<&Value> {
        let id = id.as_array()?.first()?;
        let key = id.as_str().map(str::to_string).or_else(|| id.as_i64().map(|n| n.to_string()))?;
        nodes?.get(&key)
    };
    let class = |n: &Value| n.get("class_type").and_then(Value::as_str).unwrap_or("").to_string();
    let input = |n: &Value, k: &str| n.get("inputs").and_then(|i| i.get(k)).cloned();
    let scalar = |v: Option<Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    // Follows links through nodes (up to a depth) until one has any of `keys` as a value.
    fn follow<'a>(
        start: Option<&'a Value>,
        keys: &[&str],
        node: &dyn Fn(&Value) -> Option<&'a Value>,
        depth: usize,
    ) -> Option<&'a Value> {
        let n = start?;
        let inputs = n.get("inputs")?.as_object()?;
        if keys.iter().any(|k| inputs.get(*k).is_some_and(|v| !v.is_array())) {
            return Some(n);
        }
        if depth == 0 {
            return None;
        }
        inputs.values().filter(|v| v.is_array()).find_map(|v| follow(node(v), keys, node, depth - 1))
    }
    let mut s = Summary { source: "ComfyUI".into(), ..Summary::default() };
    let Some(sampler) =
        nodes.and_then(|m| m.values().find(|n| matches!(class(n).as_str(), "KSampler" | "KSamplerAdvanced")))
    else {
        return s;
    };
    let text = |link: &str| -> Option<String> {
        let n = follow(input(sampler, link).as_ref().and_then(node), &["text", "text_g"], &node, 4)?;
        scalar(input(n, "text").or_else(|| input(n, "text_g")))
    };
    s.prompt = text("positive");
    s.negative_prompt = text("negative");
    s.sampler = match (scalar(input(sampler, "sampler_name")), scalar(input(sampler, "scheduler"))) {
        (Some(a), Some(b)) => Some(format!("{a} ({b})")),
        (a, _) => a,
    };
    s.steps = scalar(input(sampler, "steps"));
    s.cfg_scale = scalar(input(sampler, "cfg"));
    s.seed = scalar(input(sampler, "seed").or_else(|| input(sampler, "noise_seed")));
    if let Some(latent) = follow(input(sampler, "latent_image").as_ref().and_then(node), &["width"], &node, 4) {
        if let (Some(w), Some(h)) = (scalar(input(latent, "width")), scalar(input(latent, "height"))) {
            s.size = Some(format!("{w}x{h}"));
        }
    }
    let ckpt = follow(input(sampler, "model").as_ref().and_then(node), &["ckpt_name", "unet_name"], &node, 8);
    s.model = ckpt.and_then(|n| scalar(input(n, "ckpt_name").or_else(|| input(n, "unet_name"))));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_follows_a1111() {
        let name = |s: &str, t: Option<&str>| a1111_sampler(s, t).unwrap().0;
        assert_eq!(name("DPM++ 2M", None), "DPM++ 2M Karras");
        assert_eq!(name("DPM++ 2M", Some("Automatic")), "DPM++ 2M Karras");
        assert_eq!(name("DPM++ 2M", Some("Uniform")), "DPM++ 2M");
        assert_eq!(name("DPM++ 2M SDE", None), "DPM++ 2M SDE Exponential");
        assert_eq!(name("DPM++ 2M Karras", Some("Uniform")), "DPM++ 2M Karras");
        assert_eq!(name("Euler a", None), "Euler a");
        assert_eq!(name("Euler", Some("Karras")), "Euler Karras");
        let (n, w) = a1111_sampler("Euler", Some("SGM Uniform")).unwrap();
        assert_eq!(n, "Euler");
        assert!(w.unwrap().contains("SGM Uniform"));
        assert!(a1111_sampler("DPM fast", None).unwrap_err().contains("--scheduler"));
    }

    #[test]
    fn a1111_vae_is_summarised_and_said_not_used() {
        let text = "a cat\nNegative prompt: \nSteps: 12, Sampler: Euler, CFG scale: 6, Seed: 1, Size: 64x64, \
                    Model hash: abc, Model: foo, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, \
                    Version: v1.10.1";
        let i = from_parameters(text).unwrap();
        assert_eq!(i.settings.vae, None, "the other machine's file is not taken");
        assert!(i.warnings.iter().any(|w| w.contains("vae-ft-mse") && w.contains("--vae")), "{:?}", i.warnings);
        assert!(!i.warnings.iter().any(|w| w.contains("not understood")), "{:?}", i.warnings);
        let summary = Summary::of(&Source::A1111 { parameters: text.to_string() });
        assert_eq!(summary.vae.as_deref(), Some("vae-ft-mse-840000-ema-pruned.safetensors (hash 735e4c3a44)"));
        assert!(summary.render().contains("vae:       vae-ft-mse"), "{}", summary.render());
    }

    #[test]
    fn a1111_text_to_settings() {
        let text = "a cat, sitting\nNegative prompt: dog\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, \
                    CFG scale: 6.5, Seed: 77, Size: 64x96, Clip skip: 2, Hires upscale: 2, ENSD: 31337, \
                    Model hash: abc, Model: foo, Version: v1.10.1";
        let i = from_parameters(text).unwrap();
        let s = &i.settings;
        assert_eq!(s.prompt.as_deref(), Some("a cat, sitting"));
        assert_eq!(s.negative_prompt.as_deref(), Some("dog"));
        assert_eq!((s.steps, s.guidance, s.seed), (Some(12), Some(6.5), Some(77)));
        assert_eq!((s.width, s.height, s.clip_skip), (Some(64), Some(96), Some(2)));
        assert_eq!(s.scheduler.as_deref(), Some("DPM++ 2M Karras"));
        assert_eq!(s.model, None);
        assert_eq!(i.warnings, ["not understood, ignored: Hires upscale, ENSD"]);
        assert!(i.sampler_error.is_none());
    }
}
