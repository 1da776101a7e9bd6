//! Output file names from templates such as `{timestamp}-{index}-{seed}`, checked so that a
//! template (or a prompt put into it) can never write outside the output folder.

use std::path::{Component, Path, PathBuf};

use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// The default template: timestamp, index and seed, so names from different runs do not
/// collide (and a collision that still happens is resolved with a suffix, see
/// [`super::png::OnExisting::AddSuffix`]).
pub const DEFAULT_TEMPLATE: &str = "{timestamp}-{index}-{seed}";

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["index", "seed", "prompt", "timestamp"];

/// Longest `{prompt}` slug, in characters (all ASCII).
pub const SLUG_MAX: usize = 60;

/// The values a template is filled with, for one image.
#[derive(Debug, Clone, Copy)]
pub struct NameFields<'a> {
    /// Position of the image in the run; written with 5 digits (`00007`), as A1111 does.
    pub index: usize,
    pub seed: u64,
    /// The prompt; it goes in as a [`slug`].
    pub prompt: &'a str,
    /// Usually [`timestamp_now`], taken once per run so the images of a run share it.
    pub timestamp: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Index,
    Seed,
    Prompt,
    Timestamp,
}

/// A parsed, validated file name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            source: DEFAULT_TEMPLATE.to_string(),
            parts: vec![Part::Timestamp, lit("-"), Part::Index, lit("-"), Part::Seed],
        }
    }
}

fn lit(s: &str) -> Part {
    Part::Literal(s.to_string())
}

impl Template {
    /// Parses a template. `{name}` is a placeholder (see [`PLACEHOLDERS`]); `/` makes
    /// subfolders of the output folder; `..`, absolute paths and `\` are refused.
    pub fn parse(template: &str) -> Result<Template> {
        let bad = |why: String| Error::invalid(format!("output name template {template:?}: {why}"));
        if template.trim().is_empty() {
            return Err(bad("it is empty".into()));
        }
        if template.contains(['\\', '\0']) {
            return Err(bad("it may not contain `\\` or NUL; use `/` for subfolders".into()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(bad("a `}` has no matching `{`".into())),
                Some(i) => {
                    if i > 0 {
                        parts.push(lit(&rest[..i]));
                    }
                    let after = &rest[i + 1..];
                    let Some(end) = after.find('}') else {
                        return Err(bad("a `{` is not closed".into()));
                    };
                    parts.push(match &after[..end] {
                        "index" => Part::Index,
                        "seed" => Part::Seed,
                        "prompt" => Part::Prompt,
                        "timestamp" => Part::Timestamp,
                        other => {
                            let known = PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ");
                            return Err(bad(format!("unknown placeholder {{{other}}}; known ones are {known}")));
                        }
                    });
                    rest = &after[end + 1..];
                }
                None => {
                    parts.push(lit(rest));
                    rest = "";
                }
            }
        }
        let t = Template { source: template.to_string(), parts };
        // The literal parts alone decide whether a name can escape (placeholders expand to
        // safe characters only), so checking one rendering checks them all.
        t.render(&NameFields { index: 0, seed: 0, prompt: "", timestamp: "20000101-000000" })?;
        Ok(t)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True for [`DEFAULT_TEMPLATE`].
    pub fn is_default(&self) -> bool {
        self.source == DEFAULT_TEMPLATE
    }

    /// The file's path relative to the output folder, with `.png` appended if missing.
    pub fn render(&self, fields: &NameFields<'_>) -> Result<PathBuf> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => name.push_str(s),
                Part::Index => name.push_str(&format!("{:05}", fields.index)),
                Part::Seed => name.push_str(&fields.seed.to_string()),
                Part::Prompt => name.push_str(&slug(fields.prompt)),
                Part::Timestamp => name.push_str(&sanitize_component(fields.timestamp)),
            }
        }
        if !name.to_ascii_lowercase().ends_with(".png") {
            name.push_str(".png");
        }
        check_relative(&self.source, Path::new(&name))?;
        Ok(PathBuf::from(name))
    }

    /// The full path of one image: `out_dir` joined with [`Template::render`].
    pub fn resolve(&self, out_dir: &Path, fields: &NameFields<'_>) -> Result<PathBuf> {
        Ok(out_dir.join(self.render(fields)?))
    }
}

/// Where the preview of the image at `image` goes while it forms: `NAME.preview.png` beside
/// `NAME.png`.
pub fn preview_path(image: &Path) -> PathBuf {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = match name.len().checked_sub(4) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(".png") => &name[..cut],
        _ => name.as_str(),
    };
    image.with_file_name(format!("{stem}.preview.png"))
}

/// Refuses anything but plain names below the output folder.
fn check_relative(template: &str, rel: &Path) -> Result<()> {
    let outside = || {
        Error::invalid(format!(
            "output name template {template:?} gives {}, which is not inside the output folder; \
             use a plain name, optionally with subfolders (no `..`, no leading `/`)",
            rel.display()
        ))
    };
    let mut normal = 0;
    for c in rel.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    let file = rel.file_name().map(|f| f.to_string_lossy().to_ascii_lowercase());
    if normal == 0 || rel.as_os_str().to_string_lossy().ends_with('/') || file.as_deref() == Some(".png") {
        return Err(Error::invalid(format!(
            "output name template {template:?} gives {}, which has no file name",
            rel.display()
        )));
    }
    Ok(())
}

/// Keeps a caller-given value (the timestamp) from adding path structure.
fn sanitize_component(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A file-name-safe form of a prompt: lowercase ASCII letters and digits, words joined by
/// `_`, accents dropped (`é` → `e`), other scripts left out, at most [`SLUG_MAX`]
/// characters, never empty (`image` when nothing is left).
pub fn slug(prompt: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    // NFKD splits accented letters into base letter + combining mark; the mark is then
    // dropped as non-ASCII.
    for c in prompt.nfkd() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else if !unicode_normalization::char::is_combining_mark(c) {
            gap = true;
        }
        if out.len() >= SLUG_MAX {
            break;
        }
    }
    out.truncate(SLUG_MAX);
    let out = out.trim_end_matches('_');
    if out.is_empty() {
        "image".to_string()
    } else {
        out.to_string()
    }
}

/// The current local time as `YYYYMMDD-HHMMSS`, the `{timestamp}` value.
pub fn timestamp_now() -> String {
    chrono::Local::now().format("%Y%m%d-%H%M%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_path_is_beside_the_image() {
        assert_eq!(preview_path(Path::new("out/a/cat.png")), PathBuf::from("out/a/cat.preview.png"));
        assert_eq!(preview_path(Path::new("CAT.PNG")), PathBuf::from("CAT.preview.png"));
        assert_eq!(preview_path(Path::new("x/0001-7")), PathBuf::from("x/0001-7.preview.png"));
    }

    fn fields(prompt: &str) -> NameFields<'_> {
        NameFields { index: 7, seed: 1234, prompt, timestamp: "20261126-130501" }
    }

    #[test]
    fn default_template() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(t, Template::default());
        assert!(t.is_default());
        assert_eq!(t.render(&fields("x")).unwrap(), PathBuf::from("20261126-130501-00007-1234.png"));
    }

    #[test]
    fn placeholders_and_extension() {
        let t = Template::parse("{seed}_{prompt}").unwrap();
        assert_eq!(t.render(&fields("A Red Fox, at dawn!")).unwrap(), PathBuf::from("1234_a_red_fox_at_dawn.png"));
        let t = Template::parse("run/{index}.PNG").unwrap();
        assert_eq!(t.render(&fields("")).unwrap(), PathBuf::from("run/00007.PNG"));
        assert_eq!(t.resolve(Path::new("/out"), &fields("")).unwrap(), PathBuf::from("/out/run/00007.PNG"));
    }

    #[test]
    fn unknown_placeholder_lists_known_ones() {
        let e = Template::parse("{steps}").unwrap_err().to_string();
        assert!(e.contains("{steps}"), "{e}");
        for p in PLACEHOLDERS {
            assert!(e.contains(&format!("{{{p}}}")), "{e}");
        }
        assert!(Template::parse("{seed").is_err());
        assert!(Template::parse("seed}").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn escaping_templates_are_refused() {
        for t in ["../{seed}", "a/../../{seed}", "/tmp/{seed}", "../", "a\\b{seed}", "{seed}/", ".png", "a/.png"] {
            assert!(Template::parse(t).is_err(), "{t} was accepted");
        }
        // Dots inside a name are fine: `..` + `.png` is the plain file `...png`.
        assert!(Template::parse("..{seed}").is_ok());
        assert!(Template::parse("..").is_ok());
    }

    #[test]
    fn prompt_cannot_add_path_structure() {
        let t = Template::parse("{prompt}").unwrap();
        for p in ["../../etc/passwd", "/abs/path", "a\\b", "..", "."] {
            let rel = t.render(&fields(p)).unwrap();
            assert_eq!(rel.components().count(), 1, "{p} gave {}", rel.display());
            assert!(!rel.to_string_lossy().contains(['/', '\\']));
        }
        assert_eq!(t.render(&fields("../../etc/passwd")).unwrap(), PathBuf::from("etc_passwd.png"));
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Crème Brûlée"), "creme_brulee");
        assert_eq!(slug("猫と犬"), "image");
        assert_eq!(slug(""), "image");
        assert_eq!(slug("  --  "), "image");
        assert_eq!(slug("a 🐱 b"), "a_b");
        let long = slug(&"word ".repeat(100));
        assert!(long.len() <= SLUG_MAX && !long.ends_with('_'), "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp_now();
        assert_eq!(t.len(), 15);
        assert_eq!(t.as_bytes()[8], b'-');
    }
}
