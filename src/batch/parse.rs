//! Reading batch files (plain text, JSONL, CSV) and resolving each line into a checked request.
//!
//! Every line is parsed and validated before any work starts, so a typo on line 9,000 is found
//! in a second rather than after hours of rendering. Lines are numbered twice: `line` is the
//! 1-based physical line (what messages show) and `index` is the 0-based position among the
//! file's entries, blank and comment lines excluded. Invalid lines keep their index, so fixing
//! one later does not rename the outputs of the lines after it.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{Job, Shard};
use crate::{Error, Request, Result};

/// The keys a JSONL object or a CSV header may use.
pub const KNOWN_KEYS: &[&str] = &[
    "prompt",
    "negative",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "scheduler",
    "num_images",
    "clip_skip",
    "filename",
    "original_size",
    "crop_coords",
    "target_size",
    "negative_original_size",
    "negative_crop_coords",
    "negative_target_size",
    "timestep_spacing",
    "init_image",
    "mask",
    "strength",
    "prompt_syntax",
    "lora",
];

/// Other tools' spellings of keys (A1111's and diffusers'), each with the key it means.
pub const KEY_ALIASES: &[(&str, &str)] = &[
    ("negative_prompt", "negative"),
    ("cfg_scale", "guidance"),
    ("guidance_scale", "guidance"),
    ("sampler_name", "scheduler"),
    ("sampler", "scheduler"),
    ("num_inference_steps", "steps"),
    ("num_images_per_prompt", "num_images"),
    ("denoising_strength", "strength"),
];

/// The key an alias stands for; other keys unchanged.
pub fn canonical_key(key: &str) -> &str {
    KEY_ALIASES.iter().find(|(alias, _)| *alias == key).map_or(key, |(_, k)| k)
}

fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.contains(&canonical_key(key))
}

/// The three input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One prompt a line; blank lines and lines starting with `#` are skipped. A line that
    /// starts with `--` is in A1111's "prompts from file" form
    /// (`--prompt "a cat" --steps 20 --negative_prompt "dog"`).
    Text,
    /// One JSON object a line, keys from [`KNOWN_KEYS`].
    Jsonl,
    /// A header row of keys from [`KNOWN_KEYS`], then one row a line; empty cells are not set.
    Csv,
}

impl Format {
    /// The format a file name's extension names: `.txt`, `.jsonl`/`.ndjson`, `.csv`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" => Some(Format::Text),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    /// Guesses the format from the first entry: `{` starts JSONL; a comma-separated row with a
    /// `prompt` cell, or of two or more known keys, is a CSV header (so a misspelt column is
    /// reported, not rendered as a prompt); anything else is plain text.
    pub fn sniff(text: &str) -> Format {
        let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        match first {
            Some(l) if l.starts_with('{') => Format::Jsonl,
            Some(l) if looks_like_csv_header(l) => Format::Csv,
            _ => Format::Text,
        }
    }
}

fn looks_like_csv_header(line: &str) -> bool {
    let cells: Vec<&str> = line.split(',').map(|c| c.trim().trim_matches('"')).collect();
    cells.contains(&"prompt") || (cells.len() > 1 && cells.iter().all(|c| is_known_key(c)))
}

/// A batch file's text, its display name and its format.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInput {
    /// The path as given, or `<stdin>`.
    pub name: String,
    pub format: Format,
    pub text: String,
    /// The folder relative paths in the file (`init_image`, `mask`) are read from: the
    /// file's own folder (the current one for stdin).
    pub base_dir: PathBuf,
}

impl BatchInput {
    /// Reads a batch file; `-` reads stdin. The format comes from the extension, or is sniffed
    /// from the content when the extension is missing or unknown.
    pub fn read(path: &Path) -> Result<BatchInput> {
        let (name, bytes) = if path == Path::new("-") {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).map_err(|e| Error::io("<stdin>", e))?;
            ("<stdin>".to_string(), bytes)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            (path.display().to_string(), bytes)
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return Err(Error::invalid(format!(
                    "{name} is not UTF-8 text (first bad byte at offset {}); save it as UTF-8",
                    e.utf8_error().valid_up_to()
                )))
            }
        };
        let format = if path == Path::new("-") { None } else { Format::from_extension(path) };
        let mut input = BatchInput::from_text(name, text, format);
        if path != Path::new("-") {
            input.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        Ok(input)
    }

    /// An input from text in memory; `format: None` sniffs it.
    pub fn from_text(name: impl Into<String>, text: impl Into<String>, format: Option<Format>) -> BatchInput {
        let mut text = text.into();
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let format = format.unwrap_or_else(|| Format::sniff(&text));
        BatchInput { name: name.into(), format, text, base_dir: PathBuf::new() }
    }
}

/// The values every line starts from: the command line's request and base seed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defaults {
    /// Prompt, negative, steps, guidance, size, scheduler, num_images and clip_skip for lines
    /// that do not set them. Its `seed` is not used: see `base_seed`.
    pub request: Request,
    /// Lines without a seed get [`derive_seed`]`(base_seed, index)`.
    pub base_seed: u64,
    /// What besides the request decides an image: the model's files, precision and options
    /// (`sdgen::plan::run_key`). Part of every job's resume key, so a rerun with another
    /// model renders again.
    pub run_key: String,
    /// What a line may ask for.
    pub limits: crate::limits::Limits,
    /// Where a line's `<lora:NAME>` tags and `lora` names are looked up.
    pub lora_dir: Option<PathBuf>,
}

/// One problem with one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's entry index, when it has one (a CSV header has none).
    pub index: Option<usize>,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A valid line, resolved against the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLine {
    pub line: usize,
    pub index: usize,
    /// The full request; `seed` is the line's seed and `num_images` may be more than 1.
    pub request: Request,
    /// True when the seed came from [`derive_seed`] rather than the line.
    pub derived_seed: bool,
    /// One output name per image.
    pub file_names: Vec<String>,
}

impl PlannedLine {
    /// The line's images as jobs, image `k` with seed `seed + k`.
    pub fn jobs(&self) -> impl Iterator<Item = Job> + '_ {
        self.file_names.iter().enumerate().map(move |(k, name)| Job {
            line: self.line,
            index: self.index,
            image: k,
            request: Request { seed: self.request.image_seed(k), num_images: 1, ..self.request.clone() },
            file_name: name.clone(),
        })
    }
}

/// A whole file parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The input's display name.
    pub input: String,
    /// How many entries (non-blank, non-comment lines) the file has, valid or not.
    pub entries: usize,
    /// The valid lines, in file order.
    pub lines: Vec<PlannedLine>,
    /// Every problem found, in file order.
    pub problems: Vec<LineError>,
}

impl Plan {
    /// Parses and validates `input`. Scheduler names are checked by `validate_scheduler`, which
    /// returns a message saying what is wrong (for example the list of known names).
    pub fn new(
        input: &BatchInput,
        defaults: &Defaults,
        validate_scheduler: &dyn Fn(&str) -> Result<(), String>,
    ) -> Plan {
        let (entries, mut problems) = match input.format {
            Format::Text => (parse_text(&input.text), Vec::new()),
            Format::Jsonl => (parse_jsonl(&input.text), Vec::new()),
            Format::Csv => parse_csv(&input.text),
        };
        let count = entries.len();
        let mut lines = Vec::new();
        // Lower-cased so that names differing only in case, which collide on macOS and Windows
        // file systems, are caught too.
        let mut owners: HashMap<String, usize> = HashMap::new();
        for entry in entries {
            let (line, index) = (entry.line, entry.index);
            match resolve(entry, defaults, validate_scheduler, &input.base_dir) {
                Ok(planned) => {
                    let clash = planned
                        .file_names
                        .iter()
                        .find_map(|n| owners.get(&n.to_lowercase()).map(|other| (n.clone(), *other)));
                    if let Some((name, other)) = clash {
                        let message = format!("output file \"{name}\" is also written by line {other}");
                        problems.push(LineError { line, index: Some(index), message });
                        continue;
                    }
                    for n in &planned.file_names {
                        owners.insert(n.to_lowercase(), line);
                    }
                    lines.push(planned);
                }
                Err(messages) => {
                    problems.extend(messages.into_iter().map(|message| LineError { line, index: Some(index), message }))
                }
            }
        }
        problems.sort_by_key(|p| p.line);
        Plan { input: input.name.clone(), entries: count, lines, problems }
    }

    /// Turns every line whose `clip_skip` is more than the text encoder's `layers` into a
    /// problem. The layer count comes from the model's config, so this runs once the model is
    /// known but before anything is loaded or rendered.
    pub fn check_clip_skip(&mut self, layers: usize) {
        let (ok, bad): (Vec<PlannedLine>, Vec<PlannedLine>) =
            std::mem::take(&mut self.lines).into_iter().partition(|l| l.request.clip_skip.is_none_or(|s| s <= layers));
        for l in bad {
            let skip = l.request.clip_skip.unwrap_or_default();
            let message = format!(
                "clip_skip {skip} is out of range: the model's text encoder has {layers} layers, so use 1..={layers}"
            );
            self.problems.push(LineError { line: l.line, index: Some(l.index), message });
        }
        self.lines = ok;
        self.problems.sort_by_key(|p| p.line);
    }

    /// The jobs of one shard, in file order.
    pub fn jobs(&self, shard: Shard) -> Vec<Job> {
        self.lines.iter().filter(|l| shard.contains(l.index)).flat_map(PlannedLine::jobs).collect()
    }

    /// All problems as one message: a count, then one problem a line (at most `limit`).
    pub fn report(&self, limit: usize) -> String {
        let mut lines_with_problems: Vec<usize> = self.problems.iter().map(|p| p.line).collect();
        lines_with_problems.dedup();
        let mut text = format!(
            "{}: {} problem{} on {} line{}",
            self.input,
            self.problems.len(),
            plural(self.problems.len()),
            lines_with_problems.len(),
            plural(lines_with_problems.len())
        );
        for p in self.problems.iter().take(limit) {
            text.push_str(&format!("\n  {p}"));
        }
        if self.problems.len() > limit {
            text.push_str(&format!("\n  ... and {} more", self.problems.len() - limit));
        }
        text
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The seed of a line that gives none: the low 32 bits of `splitmix64(base_seed XOR index)`.
///
/// It depends only on the base seed and the line's index, so every run, shard and machine gives
/// a line the same seed. 32 bits keeps seeds short in file names and within the range that A1111
/// and most UIs accept.
pub fn derive_seed(base_seed: u64, index: usize) -> u64 {
    splitmix64(base_seed ^ index as u64) & 0xFFFF_FFFF
}

/// Sebastiano Vigna's SplitMix64 finaliser applied to `x + golden gamma`: one step of the
/// SplitMix64 generator seeded with `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generated output name of a line's image: `000042-s1234567.png`, or with `image: Some(k)`
/// (lines with `num_images` > 1) `000042-s1234567-k.png`. `seed` is the line's seed.
pub fn output_name(index: usize, seed: u64, image: Option<usize>) -> String {
    match image {
        None => format!("{index:06}-s{seed}.png"),
        Some(k) => format!("{index:06}-s{seed}-{k}.png"),
    }
}

/// A line's own values, before the defaults fill the gaps.
#[derive(Debug, Default, Clone, PartialEq)]
struct Overrides {
    prompt: Option<String>,
    negative: Option<String>,
    seed: Option<u64>,
    steps: Option<usize>,
    guidance: Option<f64>,
    width: Option<u32>,
    height: Option<u32>,
    scheduler: Option<String>,
    num_images: Option<usize>,
    clip_skip: Option<usize>,
    filename: Option<String>,
    size_conditioning: crate::request::SizeConditioning,
    timestep_spacing: Option<crate::request::TimestepSpacing>,
    init_image: Option<String>,
    mask: Option<String>,
    strength: Option<f64>,
    prompt_syntax: Option<crate::request::PromptSyntax>,
    /// `lora`: replaces the command line's LoRAs for this line.
    lora: Option<Vec<(String, f64)>>,
}

/// One entry of the file as read, with the problems found while reading it.
#[derive(Debug)]
struct Entry {
    line: usize,
    index: usize,
    overrides: Overrides,
    problems: Vec<String>,
    /// The line could not be read at all, so checking its values would only add noise.
    unreadable: bool,
}

/// Content lines with their 1-based line numbers: blank lines and `#` comments dropped.
fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn parse_text(text: &str) -> Vec<Entry> {
    content_lines(text)
        .enumerate()
        .map(|(index, (line, prompt))| {
            let mut entry =
                Entry { line, index, overrides: Overrides::default(), problems: Vec::new(), unreadable: false };
            if prompt.starts_with("--") {
                if let Err(message) = a1111_line(&mut entry.overrides, prompt) {
                    entry.unreadable = true;
                    entry.problems.push(message);
                }
            } else {
                entry.overrides.prompt = Some(prompt.to_string());
            }
            entry
        })
        .collect()
}

/// A1111's "prompts from file" options that change nothing sdgen makes.
const A1111_IGNORED: &[&str] = &["outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_grid"];

/// Reads a line in A1111's "prompts from file" form the way its script does: split like a
/// POSIX shell (Python's `shlex.split`), `--tag value` pairs, and `--prompt` and
/// `--negative_prompt` taking every word up to the next `--`. The sampler and its schedule are
/// read with A1111's meaning ([`crate::import::a1111_sampler`]).
fn a1111_line(o: &mut Overrides, line: &str) -> std::result::Result<(), String> {
    let words = shlex_split(line)?;
    let (mut sampler, mut schedule, mut n_iter, mut batch_size) = (None, None, None::<usize>, None::<usize>);
    let mut pos = 0;
    while pos < words.len() {
        let Some(tag) = words[pos].strip_prefix("--") else {
            return Err(format!("A1111 options must start with \"--\": {}", words[pos]));
        };
        let Some(first) = words.get(pos + 1) else {
            return Err(format!("missing value for --{tag}"));
        };
        pos += 2;
        if tag == "prompt" || tag == "negative_prompt" {
            let mut text = first.clone();
            while pos < words.len() && !words[pos].starts_with("--") {
                text.push(' ');
                text.push_str(&words[pos]);
                pos += 1;
            }
            if tag == "prompt" {
                o.prompt = Some(text);
            } else {
                o.negative = Some(text);
            }
            continue;
        }
        let cell = Raw::Cell(first);
        match tag {
            "sampler_name" => sampler = Some(first.clone()),
            "scheduler" => schedule = Some(first.clone()),
            "n_iter" => n_iter = whole(tag, cell)?,
            "batch_size" => batch_size = whole(tag, cell)?,
            "seed" | "steps" | "cfg_scale" | "width" | "height" | "denoising_strength" => {
                apply(o, canonical_key(tag), cell)?
            }
            t if A1111_IGNORED.contains(&t) => {}
            _ => return Err(format!("A1111 option --{tag} is not supported by sdgen")),
        }
    }
    if let Some(name) = sampler {
        let (name, warning) = crate::import::a1111_sampler(&name, schedule.as_deref())?;
        if let Some(w) = warning {
            return Err(w);
        }
        o.scheduler = Some(name);
    } else if schedule.is_some() {
        return Err("--scheduler needs --sampler_name".into());
    }
    if n_iter.is_some() || batch_size.is_some() {
        o.num_images = Some(n_iter.unwrap_or(1).saturating_mul(batch_size.unwrap_or(1)));
    }
    if o.prompt.is_none() {
        return Err("an A1111 options line needs --prompt".into());
    }
    Ok(())
}

/// Python's `shlex.split(line)` (POSIX mode, no comments): words split on whitespace, single
/// quotes literal, double quotes with `\\` escaping `"`, `\\`, `$` and `` ` ``, a backslash
/// elsewhere escaping the next character.
fn shlex_split(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("no closing quotation".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("no closing quotation".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("no closing quotation".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("no escaped character".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn parse_jsonl(text: &str) -> Vec<Entry> {
    content_lines(text)
        .enumerate()
        .map(|(index, (line, json))| {
            let mut entry =
                Entry { line, index, overrides: Overrides::default(), problems: Vec::new(), unreadable: false };
            match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(map)) => {
                    let duplicate = duplicate_key(json).or_else(|| aliased_twice(map.keys()));
                    if let Some(key) = &duplicate {
                        entry.unreadable = true;
                        entry.problems.push(format!("key \"{key}\" appears more than once; set each key once"));
                    }
                    for (key, value) in map.iter().filter(|_| duplicate.is_none()) {
                        if let Err(message) = apply(&mut entry.overrides, key, Raw::Json(value)) {
                            entry.problems.push(message);
                        }
                    }
                }
                Ok(other) => {
                    entry.unreadable = true;
                    entry
                        .problems
                        .push(format!("expected a JSON object like {{\"prompt\": \"...\"}}, got {}", kind(&other)))
                }
                Err(e) => {
                    entry.unreadable = true;
                    entry.problems.push(format!("not valid JSON: {e}"))
                }
            }
            entry
        })
        .collect()
}

/// The first key that a JSON object sets twice. serde_json keeps the last value silently,
/// which would run a line other than the one its author reads.
fn duplicate_key(json: &str) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut duplicate = None;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if duplicate.is_none() && seen.contains(&key) {
                    duplicate = Some(key);
                } else {
                    seen.insert(key);
                }
            }
            Ok(duplicate)
        }
    }
    serde_json::Deserializer::from_str(json).deserialize_map(Keys).ok().flatten()
}

/// A key set twice under two spellings (`negative` and `negative_prompt`).
fn aliased_twice<'a>(keys: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    keys.map(|k| canonical_key(k)).find(|k| !seen.insert(*k)).map(str::to_string)
}

/// CSV rows become entries; a bad header makes the whole file invalid, reported on its line.
///
/// Comment and blank lines are removed before the csv crate sees the text, because its line and
/// byte positions skip comments; `starts` maps positions in the kept text back to file lines.
/// (A blank line inside a quoted multi-line cell is dropped with them.)
fn parse_csv(text: &str) -> (Vec<Entry>, Vec<LineError>) {
    let mut kept = String::with_capacity(text.len());
    let mut starts: Vec<(usize, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            starts.push((kept.len(), i + 1));
            kept.push_str(raw);
            kept.push('\n');
        }
    }
    let line_of = |byte: u64| -> usize {
        let at = starts.partition_point(|(start, _)| *start as u64 <= byte);
        at.checked_sub(1).map_or(1, |i| starts[i].1)
    };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(kept.as_bytes());
    let header_line = starts.first().map_or(1, |(_, line)| *line);
    let header_error = |message: String| vec![LineError { line: header_line, index: None, message }];
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => return (Vec::new(), header_error(format!("cannot read the CSV header: {e}"))),
    };
    let mut problems = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if !is_known_key(h) {
            problems.push(format!("unknown column \"{h}\" in the header (known keys: {})", KNOWN_KEYS.join(", ")));
        } else if headers[..i].iter().any(|e| canonical_key(e) == canonical_key(h)) {
            problems.push(format!("column \"{h}\" appears twice in the header"));
        }
    }
    if headers.iter().all(|h| h.is_empty()) {
        problems.push(format!("the first line must be a header of column names from: {}", KNOWN_KEYS.join(", ")));
    }
    if !problems.is_empty() {
        let errors = problems.into_iter().map(|message| LineError { line: header_line, index: None, message });
        return (Vec::new(), errors.collect());
    }

    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (index, row) in reader.records().enumerate() {
        match row {
            Ok(record) => {
                let line = record.position().map_or(0, |p| line_of(p.byte()));
                let mut entry =
                    Entry { line, index, overrides: Overrides::default(), problems: Vec::new(), unreadable: false };
                if record.len() != headers.len() {
                    entry.problems.push(format!("has {} cells but the header has {}", record.len(), headers.len()));
                }
                for (key, cell) in headers.iter().zip(record.iter()) {
                    if let Err(message) = apply(&mut entry.overrides, key, Raw::Cell(cell)) {
                        entry.problems.push(message);
                    }
                }
                entries.push(entry);
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| line_of(p.byte()));
                errors.push(LineError { line, index: Some(index), message: format!("cannot read the CSV row: {e}") });
            }
        }
    }
    (entries, errors)
}

/// A value as found in a JSON object or a CSV cell.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Json(&'a Value),
    Cell(&'a str),
}

fn apply(o: &mut Overrides, key: &str, raw: Raw<'_>) -> std::result::Result<(), String> {
    match canonical_key(key) {
        "prompt" => o.prompt = text(key, raw)?,
        "negative" => o.negative = text(key, raw)?,
        "seed" => o.seed = whole(key, raw)?,
        "steps" => o.steps = whole(key, raw)?,
        "guidance" => o.guidance = number(key, raw)?,
        "width" => o.width = whole(key, raw)?,
        "height" => o.height = whole(key, raw)?,
        "scheduler" => o.scheduler = text(key, raw)?,
        "num_images" => o.num_images = whole(key, raw)?,
        "clip_skip" => o.clip_skip = whole(key, raw)?,
        "filename" => o.filename = text(key, raw)?,
        "original_size" => o.size_conditioning.original_size = parsed(key, raw)?,
        "crop_coords" => o.size_conditioning.crop_coords = parsed(key, raw)?,
        "target_size" => o.size_conditioning.target_size = parsed(key, raw)?,
        "negative_original_size" => o.size_conditioning.negative_original_size = parsed(key, raw)?,
        "negative_crop_coords" => o.size_conditioning.negative_crop_coords = parsed(key, raw)?,
        "negative_target_size" => o.size_conditioning.negative_target_size = parsed(key, raw)?,
        "timestep_spacing" => o.timestep_spacing = parsed(key, raw)?,
        "init_image" => o.init_image = text(key, raw)?,
        "mask" => o.mask = text(key, raw)?,
        "strength" => o.strength = number(key, raw)?,
        "prompt_syntax" => o.prompt_syntax = parsed(key, raw)?,
        "lora" => o.lora = loras(key, raw)?,
        _ => return Err(format!("unknown key \"{key}\" (known keys: {})", KNOWN_KEYS.join(", "))),
    }
    Ok(())
}

/// `"name:0.8"`, `"a:0.5, b"` or a JSON list of such strings.
fn loras(key: &str, raw: Raw<'_>) -> std::result::Result<Option<Vec<(String, f64)>>, String> {
    let split = |s: &str| -> Vec<(String, f64)> {
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(crate::lora::parse_lora_arg).collect()
    };
    match raw {
        Raw::Json(Value::Null) | Raw::Cell("") => Ok(None),
        Raw::Json(Value::String(s)) => Ok(Some(split(s))),
        Raw::Cell(s) => Ok(Some(split(s))),
        Raw::Json(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(crate::lora::parse_lora_arg(s)),
                v => Err(format!("{key}: expected \"NAME[:WEIGHT]\" strings, got {}", kind(v))),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        Raw::Json(v) => Err(format!("{key}: expected \"NAME[:WEIGHT]\" or a list of them, got {}", kind(v))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value written as text (`"1024x768"`, `"0,0"`), parsed by its `FromStr`.
fn parsed<T: std::str::FromStr<Err = String>>(key: &str, raw: Raw<'_>) -> std::result::Result<Option<T>, String> {
    match text(key, raw)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| format!("{key}: {e}")),
    }
}

/// `null` in JSON and an empty CSV cell both mean "not set".
fn text(key: &str, raw: Raw<'_>) -> std::result::Result<Option<String>, String> {
    match raw {
        Raw::Json(Value::Null) => Ok(None),
        Raw::Json(Value::String(s)) => Ok(Some(s.clone())),
        Raw::Json(v) => Err(format!("{key}: expected a string, got {}", kind(v))),
        Raw::Cell("") => Ok(None),
        Raw::Cell(s) => Ok(Some(s.to_string())),
    }
}

fn whole<T: TryFrom<u64>>(key: &str, raw: Raw<'_>) -> std::result::Result<Option<T>, String> {
    let n = match raw {
        Raw::Json(Value::Null) | Raw::Cell("") => return Ok(None),
        Raw::Json(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| format!("{key}: expected a whole number of 0 or more, got {n}"))?
        }
        Raw::Json(Value::String(s)) => {
            return Err(format!("{key}: expected a number, got the string \"{s}\" (write it without quotes)"))
        }
        Raw::Json(v) => return Err(format!("{key}: expected a whole number, got {}", kind(v))),
        Raw::Cell(s) => {
            s.parse::<u64>().map_err(|_| format!("{key}: expected a whole number of 0 or more, got \"{s}\""))?
        }
    };
    T::try_from(n).map(Some).map_err(|_| format!("{key}: {n} is too large"))
}

fn number(key: &str, raw: Raw<'_>) -> std::result::Result<Option<f64>, String> {
    match raw {
        Raw::Json(Value::Null) | Raw::Cell("") => Ok(None),
        Raw::Json(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| format!("{key}: {n} is not a usable number")),
        Raw::Json(Value::String(s)) => {
            Err(format!("{key}: expected a number, got the string \"{s}\" (write it without quotes)"))
        }
        Raw::Json(v) => Err(format!("{key}: expected a number, got {}", kind(v))),
        Raw::Cell(s) => s.parse::<f64>().map(Some).map_err(|_| format!("{key}: expected a number, got \"{s}\"")),
    }
}

/// Fills the gaps from the defaults and checks the result; `Err` holds every problem found.
fn resolve(
    entry: Entry,
    defaults: &Defaults,
    validate_scheduler: &dyn Fn(&str) -> Result<(), String>,
    base_dir: &Path,
) -> std::result::Result<PlannedLine, Vec<String>> {
    let Entry { line, index, overrides: o, mut problems, unreadable } = entry;
    if unreadable {
        return Err(problems);
    }
    let base = &defaults.request;
    // Images are read (hashed and decoded, to check them) now; their pixels again when the
    // line runs.
    let mut open = |key: &str, rel: &Option<String>, what: &str| match rel {
        None => None,
        Some(rel) => {
            let path = base_dir.join(rel);
            match crate::init_image::InputImage::open(&path, what, false) {
                Ok(img) => Some(img),
                Err(e) => {
                    problems.push(format!("{key}: {e}"));
                    None
                }
            }
        }
    };
    let line_init = open("init_image", &o.init_image, "init image");
    let line_mask = open("mask", &o.mask, "mask");
    let init_image = line_init.or_else(|| base.init_image.clone());
    let mask = line_mask.or_else(|| base.mask.clone());
    let strength = match (&init_image, o.strength.or(base.strength)) {
        (None, s) => s,
        (Some(_), Some(s)) => Some(s),
        (Some(_), None) => Some(if mask.is_some() { 1.0 } else { 0.75 }),
    };
    // Without a size of its own, a line with an init image takes the image's.
    let (init_w, init_h) = match (&o.init_image, &init_image) {
        (Some(_), Some(img)) => (Some(img.width - img.width % 8), Some(img.height - img.height % 8)),
        _ => (None, None),
    };
    let derived_seed = o.seed.is_none();
    // `<lora:NAME:WEIGHT>` tags leave the prompt and join the line's (or the command line's) LoRAs.
    let (prompt, tags) = crate::lora::extract_prompt_loras(&o.prompt.unwrap_or_else(|| base.prompt.clone()));
    let mut loras = Vec::new();
    match o.lora {
        Some(named) => {
            for (name, weight) in named {
                match crate::lora::resolve(&name, weight, defaults.lora_dir.as_deref()) {
                    Ok(l) => loras.push(l),
                    Err(e) => problems.push(format!("lora: {e}")),
                }
            }
        }
        None => loras.extend(base.loras.iter().cloned()),
    }
    for (name, weight) in tags {
        match crate::lora::resolve(&name, weight, defaults.lora_dir.as_deref()) {
            Ok(l) => loras.push(l),
            Err(e) => problems.push(format!("prompt: {e}")),
        }
    }
    let request = Request {
        prompt,
        negative_prompt: o.negative.or_else(|| base.negative_prompt.clone()),
        seed: o.seed.unwrap_or_else(|| derive_seed(defaults.base_seed, index)),
        steps: o.steps.unwrap_or(base.steps),
        guidance: o.guidance.unwrap_or(base.guidance),
        width: o.width.or(init_w).unwrap_or(base.width),
        height: o.height.or(init_h).unwrap_or(base.height),
        scheduler: o.scheduler.unwrap_or_else(|| base.scheduler.clone()),
        num_images: o.num_images.unwrap_or(base.num_images),
        clip_skip: o.clip_skip.or(base.clip_skip),
        size_conditioning: o.size_conditioning.or(base.size_conditioning),
        timestep_spacing: o.timestep_spacing.or(base.timestep_spacing),
        prompt_syntax: o.prompt_syntax.unwrap_or(base.prompt_syntax),
        init_image,
        mask,
        strength,
        loras,
    };
    if let Err(message) = crate::init_image::check_request(&request) {
        problems.push(message);
    }

    if request.prompt.trim().is_empty() {
        problems.push("empty prompt".into());
    }
    for (name, size) in [("width", request.width), ("height", request.height)] {
        if size == 0 || size % 8 != 0 {
            problems.push(format!("{name} {size} is not a positive multiple of 8"));
        }
    }
    if request.steps == 0 {
        problems.push("steps is 0; it must be at least 1".into());
    }
    if !request.guidance.is_finite() {
        problems.push(format!("guidance {} is not a finite number", request.guidance));
    } else if request.guidance < 0.0 {
        problems.push(format!("guidance {} is negative; it must be 0 or more", request.guidance));
    }
    if request.num_images == 0 {
        problems.push("num_images is 0; it must be at least 1".into());
    }
    if request.clip_skip == Some(0) {
        problems.push("clip_skip is 0; it must be at least 1 (1 = the last layer)".into());
    }
    if let Err(message) = validate_scheduler(&request.scheduler) {
        problems.push(format!("scheduler \"{}\": {message}", request.scheduler));
    }
    if let Err(message) = defaults.limits.check_values(request.steps, request.num_images, request.width, request.height)
    {
        // Nothing below may allocate per image for a count over the limit.
        problems.push(message);
        return Err(problems);
    }
    let file_names = match &o.filename {
        Some(name) => match check_filename(name) {
            Ok(name) if request.num_images == 1 => vec![name],
            Ok(name) => {
                // check_filename guarantees a `.png` ending.
                let stem = &name[..name.len() - 4];
                names(request.num_images, |k| format!("{stem}-{k}.png"), &mut problems)
            }
            Err(message) => {
                problems.push(message);
                Vec::new()
            }
        },
        None if request.num_images == 1 => vec![output_name(index, request.seed, None)],
        None => names(request.num_images, |k| output_name(index, request.seed, Some(k)), &mut problems),
    };

    if problems.is_empty() {
        Ok(PlannedLine { line, index, request, derived_seed, file_names })
    } else {
        Err(problems)
    }
}

/// `count` names, or a problem when there is no memory for them (possible only with the
/// limits lifted).
fn names(count: usize, name: impl Fn(usize) -> String, problems: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    if out.try_reserve_exact(count).is_err() {
        problems.push(format!("num_images {count}: not enough memory to plan that many images"));
        return out;
    }
    out.extend((0..count).map(name));
    out
}

/// A `filename` must name a file directly inside the output folder: no separators, no `..`,
/// no leading dot (hidden files, and our own temp files start with a dot). A missing extension
/// gets `.png`; any other extension is an error.
fn check_filename(name: &str) -> std::result::Result<String, String> {
    if name.is_empty() {
        return Err("filename is empty".into());
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "filename \"{name}\" must be a plain file name inside the output folder, without '/' or '\\'"
        ));
    }
    if name.starts_with('.') {
        return Err(format!("filename \"{name}\" must not start with '.'"));
    }
    let name = match Path::new(name).extension().and_then(|e| e.to_str()) {
        None => format!("{name}.png"),
        Some(ext) if ext.eq_ignore_ascii_case("png") => format!("{}.png", &name[..name.len() - 4]),
        Some(ext) => {
            return Err(format!("filename \"{name}\" ends in .{ext}; it must end in .png (or have no extension)"))
        }
    };
    if name.len() > 200 {
        return Err(format!("filename \"{name}\" is longer than 200 bytes"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlex_like_python() {
        // Expected lists are what Python's shlex.split gives.
        assert_eq!(shlex_split(r#"--prompt "a cat" --steps 20"#).unwrap(), ["--prompt", "a cat", "--steps", "20"]);
        assert_eq!(shlex_split(r#"a'b c'"d\"e" f\ g"#).unwrap(), ["ab cd\"e", "f g"]);
        assert_eq!(shlex_split(r#""x\y" ''"#).unwrap(), ["x\\y", ""]);
        assert!(shlex_split("\"open").is_err());
    }

    #[test]
    fn a1111_prompt_file_lines() {
        let mut o = Overrides::default();
        let line = r#"--prompt "a red fox" in snow --steps 12 --negative_prompt "blurry, dark" --cfg_scale 6.5 --sampler_name "DPM++ 2M" --seed 5 --width 64 --height 96 --n_iter 2 --batch_size 2"#;
        a1111_line(&mut o, line).unwrap();
        assert_eq!(o.prompt.as_deref(), Some("a red fox in snow"));
        assert_eq!(o.negative.as_deref(), Some("blurry, dark"));
        assert_eq!((o.steps, o.guidance, o.seed), (Some(12), Some(6.5), Some(5)));
        assert_eq!((o.width, o.height, o.num_images), (Some(64), Some(96), Some(4)));
        // A1111's "Automatic" schedule for DPM++ 2M is Karras.
        assert_eq!(o.scheduler.as_deref(), Some("DPM++ 2M Karras"));
        let mut o = Overrides::default();
        assert!(a1111_line(&mut o, "--prompt x --styles foo").unwrap_err().contains("--styles"));
        assert!(a1111_line(&mut Overrides::default(), "--steps 3").unwrap_err().contains("--prompt"));
    }

    #[test]
    fn key_aliases() {
        let mut o = Overrides::default();
        for (k, v) in
            [("negative_prompt", "n"), ("cfg_scale", "3"), ("sampler_name", "DDIM"), ("num_inference_steps", "7")]
        {
            apply(&mut o, k, Raw::Cell(v)).unwrap();
        }
        apply(&mut o, "guidance_scale", Raw::Cell("4")).unwrap();
        assert_eq!(o.negative.as_deref(), Some("n"));
        assert_eq!((o.guidance, o.steps, o.scheduler.as_deref()), (Some(4.0), Some(7), Some("DDIM")));
        let keys = ["negative".to_string(), "negative_prompt".to_string()];
        assert_eq!(aliased_twice(keys.iter()).as_deref(), Some("negative"));
        assert_eq!(Format::sniff("negative_prompt,cfg_scale\n"), Format::Csv);
    }

    #[test]
    fn splitmix64_matches_the_published_first_output() {
        // Vigna's reference splitmix64.c seeded with 0 returns 0xE220A8397B1DCDAF first.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(derive_seed(0, 0), 0x7B1D_CDAF);
    }

    #[test]
    fn sniffing() {
        assert_eq!(Format::sniff("# c\n\n{\"prompt\": \"a\"}\n"), Format::Jsonl);
        assert_eq!(Format::sniff("prompt,seed\na,1\n"), Format::Csv);
        assert_eq!(Format::sniff("\"prompt\", \"width\"\n"), Format::Csv);
        assert_eq!(Format::sniff("prompt,colour\n"), Format::Csv);
        assert_eq!(Format::sniff("seed,steps\n"), Format::Csv);
        assert_eq!(Format::sniff("a cat, oil painting\n"), Format::Text);
        assert_eq!(Format::sniff(""), Format::Text);
        assert_eq!(Format::from_extension(Path::new("x.NDJSON")), Some(Format::Jsonl));
        assert_eq!(Format::from_extension(Path::new("x.prompts")), None);
    }

    #[test]
    fn filenames() {
        assert_eq!(check_filename("cat").as_deref(), Ok("cat.png"));
        assert_eq!(check_filename("cat.PNG").as_deref(), Ok("cat.png"));
        assert!(check_filename("../cat.png").is_err());
        assert!(check_filename("a\\b.png").is_err());
        assert!(check_filename("..").is_err());
        assert!(check_filename(".hidden.png").is_err());
        assert!(check_filename("cat.jpg").is_err());
        assert!(check_filename("").is_err());
    }

    fn plan(text: &str) -> Plan {
        let defaults = Defaults {
            request: Request { prompt: String::new(), ..Request::default() },
            base_seed: 0,
            run_key: String::new(),
            limits: Default::default(),
            lora_dir: None,
        };
        Plan::new(&BatchInput::from_text("in", text, None), &defaults, &|_| Ok(()))
    }

    #[test]
    fn duplicate_json_keys_are_refused_with_the_line() {
        let p = plan("{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"seed\": 1, \"seed\": 2}\n");
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].line, 2);
        assert!(p.problems[0].message.contains("\"seed\" appears more than once"), "{:?}", p.problems);
        assert_eq!(duplicate_key(r#"{"a": {"x": 1, "x": 2}, "b": 1}"#), None, "only top-level keys count");
    }

    #[test]
    fn limits_apply_to_lines_before_anything_is_allocated() {
        let started = std::time::Instant::now();
        let p = plan("{\"prompt\": \"a\", \"num_images\": 1000000000}\n{\"prompt\": \"b\", \"steps\": 1000000000}\n");
        assert!(started.elapsed().as_secs() < 2);
        assert!(p.lines.is_empty());
        assert!(p.problems[0].message.contains("--max-images"), "{:?}", p.problems);
        assert!(p.problems[1].message.contains("--max-steps"), "{:?}", p.problems);
    }

    #[test]
    fn clip_skip_over_the_layer_count_becomes_a_problem() {
        let mut p = plan("{\"prompt\": \"a\", \"clip_skip\": 2}\n{\"prompt\": \"b\", \"clip_skip\": 99}\n");
        assert_eq!(p.lines.len(), 2);
        p.check_clip_skip(12);
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.problems[0].line, 2);
        assert!(p.problems[0].message.contains("1..=12"), "{:?}", p.problems);
    }

    #[test]
    fn whole_numbers_reject_fractions_strings_and_overflow() {
        let v = serde_json::json!(20.5);
        assert!(whole::<usize>("steps", Raw::Json(&v)).is_err());
        let v = serde_json::json!("20");
        assert!(whole::<usize>("steps", Raw::Json(&v)).unwrap_err().contains("without quotes"));
        let v = serde_json::json!(-1);
        assert!(whole::<u64>("seed", Raw::Json(&v)).is_err());
        assert!(whole::<u32>("width", Raw::Cell("5000000000")).unwrap_err().contains("too large"));
        assert_eq!(whole::<u32>("width", Raw::Cell("")), Ok(None));
        assert_eq!(whole::<u64>("seed", Raw::Cell("18446744073709551615")), Ok(Some(u64::MAX)));
    }
}
