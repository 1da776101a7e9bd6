//! CLIP's byte-level BPE tokenizer, equal to transformers' slow `CLIPTokenizer`.
//!
//! diffusers tokenizes prompts with the Python `CLIPTokenizer` and the reference environment
//! has no `ftfy`, so transformers cleans text with its BERT `BasicTokenizer` instead; this
//! file reproduces that path step by step:
//!
//! 1. split the raw text on added tokens (`<|startoftext|>`, `<|endoftext|>`, and the pad
//!    token: SD 2.x's `!` becomes an added token, so every `!` in a prompt is its own token;
//!    and textual-inversion tokens, see [`Tokenizer::add_embedding_token`]);
//! 2. on each piece: drop NUL, U+FFFD and control/format/unassigned characters, turn
//!    whitespace into spaces, put spaces around CJK ideographs, NFC-normalise, split on
//!    whitespace and lower-case each word (accents are kept, punctuation is not split);
//! 3. cut words with CLIP's pattern (`'s|'t|…|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`), map each
//!    UTF-8 byte to a printable symbol (`bytes_to_unicode`) and apply the BPE merges, the last
//!    symbol of a word carrying `</w>`;
//! 4. look the symbols up in the vocabulary, unknown ones becoming the unk token.
//!
//! The vocabulary and merges come from `vocab.json` and `merges.txt` (what transformers 4
//! saves) or, when those are absent, from the `model` section of `tokenizer.json` (all that
//! transformers 5 saves, beside `tokenizer_config.json`). Both hold the same tables, so the
//! ids do not depend on which files a folder has; the cleaning above stays the slow
//! tokenizer's, which diffusers' goldens were made with.
//!
//! [`Tokenizer::encode`] then does what diffusers' `encode_prompt` asks of the tokenizer:
//! truncate to `model_max_length`, wrap in BOS/EOS and pad.

use crate::loading::config::parse_json;
use crate::{Error, Result};
use regex::Regex;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use unicode_normalization::UnicodeNormalization;

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// CLIP's context length; used when `tokenizer_config.json` does not say.
const DEFAULT_MAX_LENGTH: usize = 77;
/// transformers reads at most this many merges (CLIP's vocabulary minus bytes and specials).
const MAX_MERGES: usize = 49152 - 256 - 2;
/// CLIP's pre-tokenizer pattern. Python compiles it with IGNORECASE, which matters only for
/// the literals (text is lower-cased already, but `'ſ` still matches `'s` by case folding),
/// so only they are case-insensitive here. Python's `regex` module also never matches U+0345
/// (a combining mark that case-folds to a letter) with either class, so it is dropped.
const PATTERN: &str =
    r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+";

/// The result of [`Tokenizer::encode`]: exactly `max_length` ids, BOS first, EOS after the
/// last kept token, then padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<i64>,
    /// How many ids are not padding (BOS and EOS included).
    pub len: usize,
    /// Whether the prompt had more tokens than fit and some were dropped.
    pub truncated: bool,
    /// The dropped tokens decoded back to text, as diffusers prints in its warning
    /// ("The following part of your input was truncated ..."); empty when nothing was cut.
    pub removed_text: String,
}

/// A token that is matched in the raw text before any cleaning (transformers' `AddedToken`).
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: i64,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
    /// Textual-inversion tokens: the ids of `<tok>_1`, `<tok>_2`, … that follow `id` wherever
    /// the token is written (diffusers' `maybe_convert_prompt`).
    more: Vec<i64>,
    /// Textual-inversion tokens match in any ASCII case, as A1111 finds them in prompts.
    any_case: bool,
}

impl AddedToken {
    fn plain(content: String, id: i64, lstrip: bool, rstrip: bool, single_word: bool) -> AddedToken {
        AddedToken { content, id, lstrip, rstrip, single_word, more: Vec::new(), any_case: false }
    }

    /// Whether `text` starts with this token.
    fn starts(&self, text: &str) -> bool {
        let n = self.content.len();
        if self.any_case {
            text.get(..n).is_some_and(|head| head.eq_ignore_ascii_case(&self.content))
        } else {
            text.starts_with(self.content.as_str())
        }
    }
}

/// Words whose BPE split [`Tokenizer`] remembers before it starts over.
const BPE_CACHE_WORDS: usize = 50_000;

/// CLIP's BPE tokenizer loaded from a diffusers `tokenizer/` folder.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, i64>,
    decoder: HashMap<i64, String>,
    merge_ranks: HashMap<(String, String), usize>,
    added: Vec<AddedToken>,
    byte_symbol: [char; 256],
    symbol_byte: HashMap<char, u8>,
    pattern: Regex,
    bos_id: i64,
    eos_id: i64,
    pad_id: i64,
    unk_id: i64,
    max_length: usize,
    clean_up_spaces: bool,
    /// BPE results per word; prompts repeat words, and BPE is quadratic in word length.
    cache: Mutex<HashMap<String, Vec<String>>>,
}

/// A special token as written in the config files: a plain string or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Text(String),
    Full {
        content: String,
        #[serde(default)]
        lstrip: bool,
        #[serde(default)]
        rstrip: bool,
        #[serde(default)]
        single_word: bool,
    },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Text(s) => s,
            TokenSpec::Full { content, .. } => content,
        }
    }

    fn flags(&self) -> (bool, bool, bool) {
        match self {
            TokenSpec::Text(_) => (false, false, false),
            TokenSpec::Full { lstrip, rstrip, single_word, .. } => (*lstrip, *rstrip, *single_word),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct SpecialTokens {
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
    unk_token: Option<TokenSpec>,
    pad_token: Option<TokenSpec>,
    #[serde(default)]
    additional_special_tokens: Vec<TokenSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(flatten)]
    special: SpecialTokens,
    model_max_length: Option<f64>,
    clean_up_tokenization_spaces: Option<bool>,
    added_tokens_decoder: Option<HashMap<String, TokenSpec>>,
}

/// transformers' `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the rest to
/// code points from 256 up, so no byte becomes whitespace or a control character.
fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The ideograph blocks BERT's tokenizer isolates with spaces.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_optional_json<T: Default + serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_json(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl Tokenizer {
    /// Loads a tokenizer folder: `vocab.json` and `merges.txt`, or `tokenizer.json` when
    /// those are absent, and the optional `tokenizer_config.json` and
    /// `special_tokens_map.json`.
    ///
    /// Special tokens resolve as in transformers: `tokenizer_config.json` first; values in
    /// `special_tokens_map.json` override it unless the config carries `added_tokens_decoder`;
    /// missing ones default to CLIP's (`<|startoftext|>`, and `<|endoftext|>` for eos, unk and
    /// pad). `tokenizer.json`'s `added_tokens` count as added tokens too. A missing
    /// `model_max_length` means CLIP's 77.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let Bpe { vocab, merge_ranks, added: file_added, source: vocab_path } = Bpe::load(dir)?;

        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = read_optional_json(&config_path)?;
        let map_path = dir.join("special_tokens_map.json");
        let mut special = config.special;
        if config.added_tokens_decoder.is_none() {
            let map: SpecialTokens = read_optional_json(&map_path)?;
            special.bos_token = map.bos_token.or(special.bos_token);
            special.eos_token = map.eos_token.or(special.eos_token);
            special.unk_token = map.unk_token.or(special.unk_token);
            special.pad_token = map.pad_token.or(special.pad_token);
            for t in map.additional_special_tokens {
                if !special.additional_special_tokens.iter().any(|s| s.content() == t.content()) {
                    special.additional_special_tokens.push(t);
                }
            }
        }

        let max_length = match config.model_max_length {
            None => DEFAULT_MAX_LENGTH,
            Some(n) if n.fract() == 0.0 && (3.0..=1e6).contains(&n) => n as usize,
            Some(n) => {
                return Err(Error::config(
                    &config_path,
                    format!("field 'model_max_length': {n} is not a usable sequence length (CLIP uses 77)"),
                ))
            }
        };

        // Explicit added tokens first, so their ids and flags win over the plain specials.
        let mut added: Vec<AddedToken> = Vec::new();
        if let Some(decoder) = &config.added_tokens_decoder {
            let mut entries: Vec<(i64, &TokenSpec)> = Vec::new();
            for (id, spec) in decoder {
                let id: i64 = id.parse().map_err(|_| {
                    Error::config(&config_path, format!("field 'added_tokens_decoder': key '{id}' is not a token id"))
                })?;
                entries.push((id, spec));
            }
            entries.sort_by_key(|(id, _)| *id);
            for (id, spec) in entries {
                let (lstrip, rstrip, single_word) = spec.flags();
                added.push(AddedToken::plain(spec.content().to_string(), id, lstrip, rstrip, single_word));
            }
        }
        for t in file_added {
            if !added.iter().any(|a| a.content == t.content) {
                added.push(t);
            }
        }
        let mut resolve = |field: &str, spec: Option<&TokenSpec>, default: &str| -> Result<i64> {
            let content = spec.map_or(default, |s| s.content());
            if let Some(t) = added.iter().find(|t| t.content == content) {
                return Ok(t.id);
            }
            let id = *vocab.get(content).ok_or_else(|| {
                Error::config(
                    &config_path,
                    format!(
                        "{field} '{content}' is not in {}; the tokenizer files do not belong together",
                        vocab_path.display()
                    ),
                )
            })?;
            let (lstrip, rstrip, single_word) = spec.map_or((false, false, false), |s| s.flags());
            added.push(AddedToken::plain(content.to_string(), id, lstrip, rstrip, single_word));
            Ok(id)
        };
        let bos_id = resolve("bos_token", special.bos_token.as_ref(), DEFAULT_BOS)?;
        let eos_id = resolve("eos_token", special.eos_token.as_ref(), DEFAULT_EOS)?;
        let unk_id = resolve("unk_token", special.unk_token.as_ref(), DEFAULT_EOS)?;
        let pad_id = resolve("pad_token", special.pad_token.as_ref(), DEFAULT_EOS)?;
        for spec in &special.additional_special_tokens {
            resolve("additional_special_tokens", Some(spec), "")?;
        }

        let byte_symbol = byte_symbols();
        let symbol_byte = byte_symbol.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let mut decoder: HashMap<i64, String> = vocab.iter().map(|(k, &v)| (v, k.clone())).collect();
        for t in &added {
            decoder.entry(t.id).or_insert_with(|| t.content.clone());
        }
        let pattern = Regex::new(PATTERN).map_err(|e| Error::Model(format!("tokenizer pattern: {e}")))?;
        Ok(Tokenizer {
            vocab,
            decoder,
            merge_ranks,
            added,
            byte_symbol,
            symbol_byte,
            pattern,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            max_length,
            clean_up_spaces: config.clean_up_tokenization_spaces.unwrap_or(true),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The padded length of every encoding (`model_max_length`, 77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> i64 {
        self.bos_id
    }

    pub fn eos_id(&self) -> i64 {
        self.eos_id
    }

    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// How many distinct tokens the tokenizer knows, transformers' `len(tokenizer)`: the
    /// vocabulary and the added tokens outside it. The next added token gets this id.
    pub fn len(&self) -> usize {
        let outside: std::collections::HashSet<&str> =
            self.added.iter().map(|t| t.content.as_str()).filter(|c| !self.vocab.contains_key(*c)).collect();
        self.vocab.len() + outside.len()
    }

    /// Whether the tokenizer knows no token at all (never, for a loaded one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a textual-inversion token of `vectors` vectors as diffusers'
    /// `load_textual_inversion` does: `token`, then `token_1` … `token_{n-1}`, each an added
    /// token with the next free id; `token` in a prompt then gives all n ids in a row
    /// (diffusers' `maybe_convert_prompt`), in any ASCII case. Returns the ids. Fails, saying
    /// why, when `token` or a suffixed name is already a token (of the vocabulary, or added).
    pub fn add_embedding_token(&mut self, token: &str, vectors: usize) -> std::result::Result<Vec<i64>, String> {
        let names = self.check_embedding_token(token, vectors)?;
        let first = self.len() as i64;
        let ids: Vec<i64> = (first..first + vectors as i64).collect();
        for (i, (name, &id)) in names.iter().zip(&ids).enumerate() {
            self.decoder.insert(id, name.clone());
            self.added.push(AddedToken {
                content: name.clone(),
                id,
                lstrip: false,
                rstrip: false,
                single_word: false,
                more: if i == 0 { ids[1..].to_vec() } else { Vec::new() },
                any_case: true,
            });
        }
        Ok(ids)
    }

    /// How many ids the token `id` starts: a multi-vector embedding's first id starts all its
    /// vectors' ids; any other id, 1.
    pub fn group_len(&self, id: i64) -> usize {
        self.added.iter().find(|t| t.id == id).map_or(1, |t| 1 + t.more.len())
    }

    /// Why [`Tokenizer::add_embedding_token`] would fail, if it would; else the names it adds.
    pub fn check_embedding_token(&self, token: &str, vectors: usize) -> std::result::Result<Vec<String>, String> {
        if token.is_empty() || token.trim() != token {
            return Err(format!("the token {token:?} is empty or starts or ends with a space"));
        }
        if vectors == 0 {
            return Err("it holds no vectors".into());
        }
        let names: Vec<String> =
            std::iter::once(token.to_string()).chain((1..vectors).map(|i| format!("{token}_{i}"))).collect();
        for name in &names {
            if self.vocab.contains_key(name.as_str()) {
                return Err(format!(
                    "the token '{name}' is already a word of the tokenizer's vocabulary; rename the file \
                     (A1111 embeddings are named by their file)"
                ));
            }
            if let Some(t) =
                self.added.iter().find(|t| t.content == *name || (t.any_case && t.content.eq_ignore_ascii_case(name)))
            {
                return Err(format!("the token '{name}' is already taken (by '{}')", t.content));
            }
        }
        Ok(names)
    }

    /// Tokenizes, truncates to `max_length - 2` tokens, adds BOS and EOS and pads to
    /// `max_length`: `tokenizer(text, padding="max_length", truncation=True)` in transformers.
    pub fn encode(&self, text: &str) -> Encoding {
        let tokens = self.tokenize(text);
        let room = self.max_length.saturating_sub(2);
        let keep = tokens.len().min(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..keep]);
        ids.push(self.eos_id);
        let len = ids.len();
        ids.resize(self.max_length, self.pad_id);
        let truncated = tokens.len() > room;
        let removed_text = if truncated { self.decode(&tokens[room..]) } else { String::new() };
        Encoding { ids, len, truncated, removed_text }
    }

    /// The token ids of `text` without BOS, EOS, truncation or padding.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        for piece in self.split_added(text) {
            match piece {
                Piece::Added(k) => {
                    let t = &self.added[k];
                    ids.push(t.id);
                    ids.extend_from_slice(&t.more);
                }
                Piece::Text(t) => self.tokenize_plain(&t, &mut ids),
            }
        }
        ids
    }

    /// Turns ids back into text as transformers' `decode` does (specials kept, `</w>` read
    /// as a space, tokenization spaces cleaned up when the config asks).
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            let Some(token) = self.decoder.get(id) else { continue };
            // Symbols outside the byte table cannot come from the vocabulary; skip them.
            bytes.extend(token.chars().filter_map(|c| self.symbol_byte.get(&c).copied()));
        }
        let text = String::from_utf8_lossy(&bytes).replace("</w>", " ");
        let text = text.trim_matches(char::is_whitespace).to_string();
        if !self.clean_up_spaces {
            return text;
        }
        text.replace(" .", ".")
            .replace(" ?", "?")
            .replace(" !", "!")
            .replace(" ,", ",")
            .replace(" ' ", "'")
            .replace(" n't", "n't")
            .replace(" 'm", "'m")
            .replace(" 's", "'s")
            .replace(" 've", "'ve")
            .replace(" 're", "'re")
    }

    /// transformers' added-token pass: leftmost, longest added token wins; `lstrip`/`rstrip`
    /// eat whitespace beside it and `single_word` only counts it when it stands alone.
    fn split_added(&self, text: &str) -> Vec<Piece> {
        let mut parts: Vec<(String, Option<usize>)> = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let hit = self
                .added
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.content.is_empty() && t.starts(rest))
                .max_by_key(|(_, t)| t.content.len());
            match hit {
                Some((k, t)) => {
                    if start < i {
                        parts.push((text[start..i].to_string(), None));
                    }
                    parts.push((text[i..i + t.content.len()].to_string(), Some(k)));
                    i += t.content.len();
                    start = i;
                }
                None => i += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        if start < text.len() {
            parts.push((text[start..].to_string(), None));
        }

        let is_space = |c: char| c.is_whitespace();
        for i in 0..parts.len() {
            let Some(k) = parts[i].1 else { continue };
            let t = &self.added[k];
            if t.rstrip && i + 1 < parts.len() && !parts[i + 1].0.is_empty() {
                parts[i + 1].0 = parts[i + 1].0.trim_start_matches(is_space).to_string();
            }
            if t.lstrip && i > 0 && !parts[i - 1].0.is_empty() {
                parts[i - 1].0 = parts[i - 1].0.trim_end_matches(is_space).to_string();
            }
            if t.single_word && i > 0 && !parts[i - 1].0.is_empty() && !parts[i - 1].0.ends_with(' ') {
                let content = std::mem::take(&mut parts[i].0);
                parts[i - 1].0.push_str(&content);
                parts[i - 1].1 = None;
                parts[i].1 = None;
            } else if t.single_word
                && i + 1 < parts.len()
                && !parts[i + 1].0.is_empty()
                && !parts[i + 1].0.starts_with(' ')
            {
                let content = std::mem::take(&mut parts[i].0);
                parts[i + 1].0.insert_str(0, &content);
                parts[i].1 = None;
            }
        }
        parts
            .into_iter()
            .filter(|(s, _)| !s.is_empty())
            .map(|(s, k)| match k {
                Some(k) => Piece::Added(k),
                // A merged single_word piece may now equal an added token again.
                None => match self.added.iter().position(|t| t.content == s) {
                    Some(k) => Piece::Added(k),
                    None => Piece::Text(s),
                },
            })
            .collect()
    }

    /// `CLIPTokenizer._tokenize` on text free of added tokens.
    ///
    /// Words' BPE results are cached (prompts repeat words), up to [`BPE_CACHE_WORDS`].
    fn tokenize_plain(&self, text: &str, ids: &mut Vec<i64>) {
        let cleaned = basic_clean(text);
        for m in self.pattern.find_iter(&cleaned) {
            let word = m.as_str();
            if word == DEFAULT_BOS || word == DEFAULT_EOS {
                ids.push(self.vocab.get(word).copied().unwrap_or(self.unk_id));
                continue;
            }
            let symbols: String = word.bytes().map(|b| self.byte_symbol[b as usize]).collect();
            // A panic elsewhere cannot leave a half-written entry, so a poisoned cache is still valid.
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a long batch of varied prompts (or hostile text) must not grow it forever.
            if cache.len() >= BPE_CACHE_WORDS && !cache.contains_key(&symbols) {
                cache.clear();
            }
            let pieces = cache.entry(symbols).or_insert_with_key(|s| self.bpe(s));
            ids.extend(pieces.iter().map(|p| self.vocab.get(p).copied().unwrap_or(self.unk_id)));
        }
    }

    /// Greedy BPE: repeatedly merge the adjacent pair with the lowest rank, every occurrence
    /// left to right, until no ranked pair remains.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut parts: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        let mut key = (String::new(), String::new());
        while parts.len() > 1 {
            let mut best: Option<(usize, &str, &str)> = None;
            for pair in parts.windows(2) {
                key.0.clone_from(&pair[0]);
                key.1.clone_from(&pair[1]);
                if let Some(&rank) = self.merge_ranks.get(&key) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, &pair[0], &pair[1]));
                    }
                }
            }
            let Some((_, first, second)) = best else { break };
            let (first, second) = (first.to_string(), second.to_string());
            let mut merged = Vec::with_capacity(parts.len());
            let mut i = 0;
            while i < parts.len() {
                if i + 1 < parts.len() && parts[i] == first && parts[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut parts[i]));
                    i += 1;
                }
            }
            parts = merged;
        }
        parts
    }
}

enum Piece {
    /// An index into the added tokens.
    Added(usize),
    Text(String),
}

/// The BPE tables of a tokenizer folder, from whichever files it has.
struct Bpe {
    vocab: HashMap<String, i64>,
    merge_ranks: HashMap<(String, String), usize>,
    /// `tokenizer.json`'s `added_tokens`; empty for `vocab.json` folders.
    added: Vec<AddedToken>,
    /// The file the vocabulary came from, for messages.
    source: PathBuf,
}

/// `tokenizer.json` as the `tokenizers` library writes it; only what CLIP's BPE needs.
#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<JsonAddedToken>,
    model: JsonBpeModel,
}

#[derive(Deserialize)]
struct JsonAddedToken {
    id: i64,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
}

#[derive(Deserialize)]
struct JsonBpeModel {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: HashMap<String, i64>,
    merges: Vec<JsonMerge>,
    end_of_word_suffix: Option<String>,
    continuing_subword_prefix: Option<String>,
}

/// A merge in `tokenizer.json`: `"a b"` in older files, `["a", "b"]` in newer ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonMerge {
    Text(String),
    Pair(String, String),
}

impl Bpe {
    /// `vocab.json` + `merges.txt` when both are there (transformers 4 folders, and what
    /// the goldens were made from), otherwise `tokenizer.json` (transformers 5 folders).
    fn load(dir: &Path) -> Result<Bpe> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let json_path = dir.join("tokenizer.json");
        let (has_vocab, has_merges) = (vocab_path.is_file(), merges_path.is_file());
        if (has_vocab && has_merges) || !json_path.is_file() {
            if has_vocab != has_merges {
                let (have, lack) = if has_vocab { ("vocab.json", "merges.txt") } else { ("merges.txt", "vocab.json") };
                return Err(Error::config(dir, format!("has {have} but no {lack} (and no tokenizer.json)")));
            }
            if !has_vocab && dir.is_dir() {
                return Err(Error::config(
                    dir,
                    "not a CLIP tokenizer folder: it needs vocab.json and merges.txt (as transformers 4 saves \
                     them) or tokenizer.json (transformers 5)",
                ));
            }
            // Unreadable files (or a missing folder) are reported by the read itself.
            let vocab = parse_json(&vocab_path, &read_text(&vocab_path)?)?;
            let merge_ranks = parse_merges(&merges_path, &read_text(&merges_path)?)?;
            return Ok(Bpe { vocab, merge_ranks, added: Vec::new(), source: vocab_path });
        }
        let file: TokenizerJson = parse_json(&json_path, &read_text(&json_path)?)?;
        let model = file.model;
        let wrong = |what: String| {
            Error::config(&json_path, format!("{what}; sdgen reads CLIP's byte-level BPE tokenizer only"))
        };
        if let Some(kind) = model.kind.as_deref().filter(|k| *k != "BPE") {
            return Err(wrong(format!("field 'model.type': the tokenizer is {kind:?}, not \"BPE\"")));
        }
        // CLIP marks word ends with `</w>` and nothing else; other BPE files split words
        // differently, and reading them as CLIP would give wrong ids silently.
        if model.end_of_word_suffix.as_deref() != Some("</w>") {
            return Err(wrong(format!(
                "field 'model.end_of_word_suffix' is {:?}, CLIP's is \"</w>\"",
                model.end_of_word_suffix
            )));
        }
        if model.continuing_subword_prefix.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(wrong(format!(
                "field 'model.continuing_subword_prefix' is {:?}, CLIP has none",
                model.continuing_subword_prefix
            )));
        }
        let mut merge_ranks = HashMap::new();
        for (rank, merge) in model.merges.into_iter().enumerate() {
            let pair = match merge {
                JsonMerge::Pair(a, b) => (a, b),
                JsonMerge::Text(line) => {
                    let mut it = line.split(' ');
                    match (it.next(), it.next(), it.next()) {
                        (Some(a), Some(b), None) => (a.to_string(), b.to_string()),
                        _ => {
                            return Err(Error::config(
                                &json_path,
                                format!(
                                "field 'model.merges[{rank}]': expected two space-separated symbols, found {line:?}"
                            ),
                            ))
                        }
                    }
                }
            };
            if pair.0.is_empty() || pair.1.is_empty() {
                return Err(Error::config(
                    &json_path,
                    format!("field 'model.merges[{rank}]': empty symbol in {pair:?}"),
                ));
            }
            // As in `tokenizers`, a repeated pair keeps its last rank.
            merge_ranks.insert(pair, rank);
        }
        if merge_ranks.is_empty() {
            return Err(Error::config(&json_path, "field 'model.merges': no BPE merges; is this CLIP's tokenizer?"));
        }
        let mut added: Vec<AddedToken> = file
            .added_tokens
            .into_iter()
            .map(|t| AddedToken::plain(t.content, t.id, t.lstrip, t.rstrip, t.single_word))
            .collect();
        added.sort_by_key(|t| t.id);
        Ok(Bpe { vocab: model.vocab, merge_ranks, added, source: json_path })
    }
}

/// Reads BPE merges the way transformers does: strip the file, skip the `#version` line,
/// keep at most [`MAX_MERGES`]; a repeated pair keeps its last rank.
fn parse_merges(path: &Path, text: &str) -> Result<HashMap<(String, String), usize>> {
    let mut ranks = HashMap::new();
    for (rank, (lineno, line)) in text.trim().split('\n').enumerate().skip(1).take(MAX_MERGES).enumerate() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) => {
                ranks.insert((a.to_string(), b.to_string()), rank);
            }
            _ => {
                return Err(Error::config(
                    PathBuf::from(path),
                    format!("line {}: expected two space-separated symbols, found {line:?}", lineno + 1),
                ))
            }
        }
    }
    if ranks.is_empty() {
        return Err(Error::config(path, "no BPE merges found; is this CLIP's merges.txt?"));
    }
    Ok(ranks)
}

/// BERT's `BasicTokenizer` as `CLIPTokenizer` configures it without ftfy, joined by spaces.
fn basic_clean(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' {
            continue;
        }
        if c == ' ' || c == '\t' || c == '\n' || c == '\r' || is_space_separator(c) {
            spaced.push(' ');
        } else if is_other(c) {
            continue;
        } else if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let normalized: String = spaced.nfc().collect();
    let words: Vec<String> =
        normalized.split(char::is_whitespace).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    words.join(" ")
}

fn is_space_separator(c: char) -> bool {
    thread_local! {
        static ZS: Regex = Regex::new(r"^\p{Zs}$").unwrap_or_else(|_| unreachable!("static pattern"));
    }
    !c.is_ascii() && ZS.with(|re| re.is_match(c.encode_utf8(&mut [0; 4])))
}

/// Unicode category C* (control, format, private use, unassigned), which BERT drops.
fn is_other(c: char) -> bool {
    thread_local! {
        static OTHER: Regex = Regex::new(r"^\p{C}$").unwrap_or_else(|_| unreachable!("static pattern"));
    }
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    OTHER.with(|re| re.is_match(c.encode_utf8(&mut [0; 4])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2_layout() {
        let t = byte_symbols();
        assert_eq!(t[b'a' as usize], 'a');
        // Byte 0 is the first non-printable byte, so it gets the first code point past 255.
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[b' ' as usize], '\u{120}');
        assert_eq!(t[0xad], '\u{143}');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn basic_clean_drops_controls_and_splits_cjk() {
        assert_eq!(basic_clean("A\u{200b}B\tC\u{3000}D"), "ab c d");
        assert_eq!(basic_clean("猫cat"), "猫 cat");
        assert_eq!(basic_clean("e\u{301}"), "\u{e9}");
    }
}
