//! The text that travels inside each PNG: the A1111-style `parameters` string, which other
//! tools (A1111, ComfyUI, civitai, stable-diffusion.cpp) read, and the full [`Record`] as JSON,
//! which sdgen reads back for `sdgen show` and `sdgen generate --from`.

use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use super::png::read_text_chunks;
use crate::{Error, Record, Result};

/// PNG text key of the A1111-compatible parameters string.
pub const PARAMETERS_KEY: &str = "parameters";
/// PNG text key of the full [`Record`] as JSON.
pub const RECORD_KEY: &str = "sdgen";
/// A1111's "Schedule type" for the model's own sigmas at the spaced timesteps.
pub const UNIFORM: &str = "Uniform";
/// PNG text key of the licence notice.
pub const LICENSE_KEY: &str = "license";

/// A1111's infotext regex (`re_param_code` in modules/infotext_utils.py), so that whatever
/// A1111 can split, we split the same way.
const A1111_PARAM_RE: &str = r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#;

fn param_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // The pattern is a constant; a unit test compiles it, so this cannot fail at run time.
    RE.get_or_init(|| Regex::new(A1111_PARAM_RE).unwrap_or_else(|e| unreachable!("constant regex: {e}")))
}

/// The A1111 `parameters` text for one image:
///
/// ```text
/// <prompt>
/// Negative prompt: <negative>
/// Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 0123456789, Model: v1-5, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, RNG: CPU, Version: sdgen 0.1.0
/// ```
///
/// `sampler_a1111` is the scheduler's A1111 display name and `schedule_type` its A1111
/// schedule name, both from the scheduler table; `None` is written as `Uniform` (the model's
/// own sigmas). `Schedule type` is always written because A1111 reads a missing one as
/// "Automatic", which is Karras or exponential for some samplers. The negative line is always
/// written, even empty, because ComfyUI's A1111 importer builds nothing without it. `RNG: CPU`
/// says the noise comes from torch's CPU generator (A1111 assumes GPU). `Clip skip` is left out
/// when it is 1 or unset, `Model hash` when the hash is unknown, `VAE hash` and `VAE` when
/// the model's own VAE ran. Values are quoted as A1111
/// quotes them; the prompts are not (A1111 doesn't either).
pub fn parameters_text(record: &Record, sampler_a1111: &str, schedule_type: Option<&str>) -> String {
    let req = &record.request;
    let mut params: Vec<(&str, String)> =
        vec![("Steps", req.steps.to_string()), ("Sampler", sampler_a1111.to_string())];
    params.push(("Schedule type", schedule_type.unwrap_or(UNIFORM).to_string()));
    params.push(("CFG scale", format_number(req.guidance)));
    params.push(("Seed", req.seed.to_string()));
    params.push(("Size", format!("{}x{}", req.width, req.height)));
    if let (Some(_), Some(strength)) = (&req.init_image, req.strength) {
        params.push(("Denoising strength", format_number(strength)));
    }
    if let Some(hash) = &record.model.hash {
        // A1111's "short hash": the first 10 hex digits of the sha256.
        params.push(("Model hash", hash.chars().take(10).collect()));
    }
    params.push(("Model", record.model.name.clone()));
    if let Some(vae) = &record.model.vae {
        // As A1111 writes a selected VAE: the first 10 hex digits of its file's sha256, and
        // its name (A1111: the file name).
        params.push(("VAE hash", vae.sha256.chars().take(10).collect()));
        params.push(("VAE", vae.name.clone()));
    }
    if let Some(skip) = req.clip_skip.filter(|&s| s > 1) {
        params.push(("Clip skip", skip.to_string()));
    }
    if !req.loras.is_empty() {
        let hashes: Vec<String> = req
            .loras
            .iter()
            .map(|l| format!("{}: {}", l.name, l.sha256.chars().take(10).collect::<String>()))
            .collect();
        params.push(("Lora hashes", hashes.join(", ")));
    }
    if let Some(hashes) = ti_hashes(record) {
        params.push(("TI hashes", hashes));
    }
    params.push(("RNG", "CPU".to_string()));
    params.push(("Version", format!("sdgen {}", record.sdgen_version)));

    let line = params.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect::<Vec<_>>().join(", ");
    let negative = req.negative_prompt.as_deref().unwrap_or("");
    // The LoRAs left the prompt as it was resolved; A1111 keeps them there as tags.
    let tags: String = req.loras.iter().map(|l| format!(" <lora:{}:{}>", l.name, format_number(l.weight))).collect();
    // A1111 strips the whole text, so an empty prompt leaves no blank first line; the
    // negative line keeps its trailing space when empty, as A1111 writes it.
    let text = format!("{}{tags}\nNegative prompt: {negative}\n{line}", req.prompt);
    text.trim_start().to_string()
}

/// A1111's `TI hashes`: `name: hash` (the first 12 hex digits of the sha256) of each loaded
/// embedding whose token the prompt or the negative prompt names (in any case, as tokens
/// match), joined by `, `; `None` when none is named.
fn ti_hashes(record: &Record) -> Option<String> {
    let req = &record.request;
    let texts = [req.prompt.to_lowercase(), req.negative_prompt.as_deref().unwrap_or_default().to_lowercase()];
    let used: Vec<String> = record
        .model
        .embeddings
        .iter()
        .filter(|e| texts.iter().any(|t| t.contains(&e.token.to_lowercase())))
        .map(|e| format!("{}: {}", e.token, e.sha256.chars().take(12).collect::<String>()))
        .collect();
    (!used.is_empty()).then(|| used.join(", "))
}

/// A number as A1111 prints it: `7`, not `7.0`; `7.5` as `7.5`.
pub fn format_number(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A1111's `quote()`: a value holding `,`, `:` or a newline would break the `key: value, ...`
/// line, so it is written as a JSON string (non-ASCII kept as is); anything else is left bare.
pub fn quote(value: &str) -> String {
    if !value.contains([',', '\n', ':']) {
        return value.to_string();
    }
    // serde_json escapes exactly what Python's json.dumps(ensure_ascii=False) escapes:
    // `"`, `\`, and control characters below U+0020.
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// A1111's `unquote()`: a value in double quotes is decoded as JSON; if that fails (or it is
/// not quoted) it is returned unchanged, as A1111 does.
pub fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value) {
            return s;
        }
    }
    value.to_string()
}

/// A `parameters` text split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedParameters {
    pub prompt: String,
    /// `None` when there is no `Negative prompt:` line.
    pub negative_prompt: Option<String>,
    /// The `key: value` pairs of the last line, in order, values unquoted.
    pub params: Vec<(String, String)>,
}

impl ParsedParameters {
    /// The value of the first parameter named `key` (case-sensitive, as A1111).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Reads a `parameters` text the way A1111's `parse_generation_parameters` does: the last line
/// holds the parameters if A1111's regex finds at least three `key: value` pairs on it;
/// lines before it are the prompt until a line starting `Negative prompt:`, and the negative
/// prompt after. Each line is trimmed, as in A1111.
pub fn parse_parameters(text: &str) -> Result<ParsedParameters> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::invalid("the parameters text is empty"));
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    let mut last = lines.pop().unwrap_or_default();
    if param_re().captures_iter(last).count() < 3 {
        lines.push(last);
        last = "";
    }

    let mut prompt = String::new();
    let mut negative: Option<String> = None;
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            let neg = negative.get_or_insert_with(String::new);
            append_line(neg, rest.trim());
            continue;
        }
        match negative.as_mut() {
            Some(neg) => append_line(neg, line),
            None => append_line(&mut prompt, line),
        }
    }

    let params = param_re().captures_iter(last).map(|c| (c[1].to_string(), unquote(&c[2]))).collect();
    Ok(ParsedParameters { prompt, negative_prompt: negative, params })
}

fn append_line(acc: &mut String, line: &str) {
    if !acc.is_empty() {
        acc.push('\n');
    }
    acc.push_str(line);
}

/// The [`Record`] as the compact JSON stored under [`RECORD_KEY`].
pub fn record_json(record: &Record) -> Result<String> {
    serde_json::to_string(record).map_err(|e| Error::invalid(format!("cannot serialise the image record: {e}")))
}

/// Reads the [`Record`] that sdgen stored in a PNG, for `sdgen show` and `generate --from`.
pub fn read_record(path: &Path) -> Result<Record> {
    let chunks = read_text_chunks(path)?;
    let Some((_, json)) = chunks.iter().find(|(k, _)| k == RECORD_KEY) else {
        return Err(Error::invalid(format!(
            "{} has no `{RECORD_KEY}` text chunk: it was not written by sdgen, or its metadata was stripped \
             (its A1111 `parameters` text, if any, is shown by `sdgen show`)",
            path.display()
        )));
    };
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        Error::invalid(format!(
            "{}: the `{RECORD_KEY}` record is not valid (at `{}`): {}; it may come from a different sdgen version",
            path.display(),
            e.path(),
            e.inner()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_compiles() {
        assert!(Regex::new(A1111_PARAM_RE).is_ok());
    }

    #[test]
    fn numbers_print_like_python_a1111() {
        assert_eq!(format_number(7.0), "7");
        assert_eq!(format_number(7.5), "7.5");
        assert_eq!(format_number(0.1), "0.1");
        assert_eq!(format_number(12.0), "12");
    }

    #[test]
    fn quote_matches_a1111() {
        // Expected strings are what Python's json.dumps(v, ensure_ascii=False) gives.
        assert_eq!(quote("Euler a"), "Euler a");
        assert_eq!(quote("a, b"), r#""a, b""#);
        assert_eq!(quote("k: v"), r#""k: v""#);
        assert_eq!(quote("l1\nl2"), r#""l1\nl2""#);
        assert_eq!(quote("say \"hi\", ok"), r#""say \"hi\", ok""#);
        assert_eq!(quote("猫, 🐱"), "\"猫, 🐱\"");
        assert_eq!(quote("tab\t, \\"), r#""tab\t, \\""#);
        assert_eq!(quote("ctl\u{1}:"), r#""ctl\u0001:""#);
        for v in ["a, b", "k: v", "l1\nl2", "say \"hi\", ok", "猫, 🐱", "tab\t, \\"] {
            assert_eq!(unquote(&quote(v)), v);
        }
    }

    #[test]
    fn unquote_leaves_bad_json_alone() {
        assert_eq!(unquote("\"abc"), "\"abc");
        assert_eq!(unquote("\""), "\"");
        assert_eq!(unquote(r#""\x""#), r#""\x""#);
    }

    #[test]
    fn parse_example_from_a1111_docstring() {
        let text = "girl with an artist's beret, determined\nNegative prompt: ugly, fat, (extra_limb)\n\
                    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = parse_parameters(text).unwrap();
        assert_eq!(p.prompt, "girl with an artist's beret, determined");
        assert_eq!(p.negative_prompt.as_deref(), Some("ugly, fat, (extra_limb)"));
        assert_eq!(p.get("Sampler"), Some("Euler a"));
        assert_eq!(p.get("Seed"), Some("965400086"));
        assert_eq!(p.get("Size"), Some("512x512"));
        assert_eq!(p.get("Model hash"), Some("45dee52b"));
        assert_eq!(p.params.len(), 6);
    }

    #[test]
    fn short_last_line_is_part_of_the_prompt() {
        let p = parse_parameters("a cat\nSteps: 20, Seed: 1").unwrap();
        assert_eq!(p.prompt, "a cat\nSteps: 20, Seed: 1");
        assert!(p.params.is_empty());
        assert!(parse_parameters("  \n ").is_err());
    }

    #[test]
    fn multi_line_prompts() {
        let p =
            parse_parameters("line one\nline two\nNegative prompt: n1\nn2\nSteps: 1, Sampler: DDIM, Seed: 3").unwrap();
        assert_eq!(p.prompt, "line one\nline two");
        assert_eq!(p.negative_prompt.as_deref(), Some("n1\nn2"));
    }
}
