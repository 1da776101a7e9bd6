//! Which licence a model is under, and the notices sdgen passes on with every image.
//!
//! Stable Diffusion weights come under CreativeML OpenRAIL licences whose use-based
//! restrictions (Attachment A) bind the use of generated images too (paragraph 6). sdgen
//! therefore records the licence in every PNG and leaves a notice file in each output folder.
//! The licence texts live in data/licenses/ and are embedded at build time.

use std::fs;
use std::path::Path;

use super::atomic::{write_file, OnExisting};
use crate::request::LicenseRecord;
use crate::Result;

/// Name of the notice file written once into each output folder.
pub const NOTICE_FILE_NAME: &str = "LICENSE-NOTICE.txt";

pub const OPENRAIL_M: &str = "CreativeML OpenRAIL-M";
pub const OPENRAIL_PLUSPLUS_M: &str = "CreativeML OpenRAIL++-M";

/// A licence whose text sdgen carries.
struct Known {
    name: &'static str,
    url: &'static str,
    /// Lowercase ids and names it goes by (Hugging Face model card ids first).
    aliases: &'static [&'static str],
    text: &'static str,
}

const KNOWN: [Known; 2] = [
    Known {
        name: OPENRAIL_M,
        url: "https://huggingface.co/spaces/CompVis/stable-diffusion-license",
        aliases: &[
            "creativeml-openrail-m",
            "creativeml openrail-m",
            "creativeml open rail-m",
            "creativeml open rail-m license",
        ],
        text: include_str!("../../data/licenses/creativeml-openrail-m.txt"),
    },
    Known {
        name: OPENRAIL_PLUSPLUS_M,
        url: "https://huggingface.co/stabilityai/stable-diffusion-2/blob/main/LICENSE-MODEL",
        aliases: &[
            "openrail++",
            "openrail++-m",
            "creativeml-openrail++-m",
            "creativeml openrail++-m",
            "creativeml open rail++-m",
            "creativeml open rail++-m license",
        ],
        text: include_str!("../../data/licenses/creativeml-openrail-plusplus-m.txt"),
    },
];

const NOTICE_TEMPLATE: &str = include_str!("../../data/licenses/notice.txt");
const UNKNOWN_NOTICE_TEMPLATE: &str = include_str!("../../data/licenses/unknown-notice.txt");

/// Hugging Face's id for the OpenRAIL family as a whole; it does not say which member.
const GENERIC_OPENRAIL: (&str, &str, &str) = ("openrail", "OpenRAIL", "https://huggingface.co/blog/open_rail");

fn known(name_or_id: &str) -> Option<&'static Known> {
    let key = name_or_id.trim().to_lowercase();
    KNOWN.iter().find(|k| k.name.to_lowercase() == key || k.aliases.contains(&key.as_str()))
}

/// The record of a licence sdgen knows by name or id (`creativeml-openrail-m`,
/// `openrail++`, `CreativeML OpenRAIL-M`, ...), with `source` filled in by the caller.
pub fn lookup(name_or_id: &str, source: impl Into<String>) -> Option<LicenseRecord> {
    known(name_or_id).map(|k| LicenseRecord { name: k.name.into(), url: k.url.into(), source: source.into() })
}

/// The licence the original weights of an architecture (`sd1`, `sd2`, `sdxl`) were released
/// under, for models that do not say.
pub fn default_for_architecture(architecture: &str) -> Option<LicenseRecord> {
    let (name, label) = match architecture.to_ascii_lowercase().as_str() {
        "sd1" => (OPENRAIL_M, "SD 1.x"),
        "sd2" => (OPENRAIL_PLUSPLUS_M, "SD 2.x"),
        "sdxl" => (OPENRAIL_PLUSPLUS_M, "SDXL"),
        _ => return None,
    };
    lookup(name, format!("default for the {label} architecture (the model folder names no licence)"))
}

/// Finds a model's licence: the `license:` field of the model card's YAML front matter
/// (README.md), else a LICENSE / LICENSE.md / LICENSE-MODEL / LICENSE.txt file recognised by
/// its content, else the default for the architecture. A licence sdgen does not know is
/// recorded as found (its id as the name). `source` says which way it was found.
pub fn detect(model_dir: Option<&Path>, architecture: &str) -> LicenseRecord {
    let card = model_dir.and_then(read_card_license);
    if let Some(card) = &card {
        if let Some(rec) = lookup(&card.id, format!("model card (README.md license: {})", card.id)) {
            return rec;
        }
    }
    let file = model_dir.and_then(read_license_file);
    if let Some((file_name, Some(rec))) = &file {
        return LicenseRecord { source: format!("{file_name} file in the model folder"), ..rec.clone() };
    }
    if let Some(card) = card {
        let (name, url) = if card.id == GENERIC_OPENRAIL.0 {
            (GENERIC_OPENRAIL.1.to_string(), card.link.unwrap_or_else(|| GENERIC_OPENRAIL.2.to_string()))
        } else {
            (card.name.unwrap_or_else(|| card.id.clone()), card.link.unwrap_or_default())
        };
        return LicenseRecord { name, url, source: format!("model card (README.md license: {})", card.id) };
    }
    if let Some((file_name, None)) = file {
        let name = model_dir
            .and_then(|d| fs::read_to_string(d.join(&file_name)).ok())
            .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()).map(|l| l.chars().take(80).collect()))
            .unwrap_or_else(|| "unrecognised licence".to_string());
        return LicenseRecord {
            name,
            url: String::new(),
            source: format!("{file_name} file in the model folder (not a licence sdgen recognises)"),
        };
    }
    default_for_architecture(architecture).unwrap_or_else(|| LicenseRecord {
        name: "unknown".into(),
        url: String::new(),
        source: format!("no licence found in the model folder, and architecture {architecture:?} has no default"),
    })
}

/// The licence of the model at `path`, for `sdgen license --model`: a diffusers folder is read
/// as in [`detect`] (its architecture from `unet/config.json`, else `fallback_arch`); a
/// single `.safetensors` checkpoint gets the default of the architecture its tensor shapes
/// show. A path that does not exist, or is neither, is an error.
pub fn for_model_path(path: &Path, fallback_arch: &str) -> crate::Result<LicenseRecord> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            crate::Error::invalid(format!("no such model folder or file: {}", path.display()))
        }
        _ => crate::Error::io(path, e),
    })?;
    if meta.is_dir() {
        let unet = path.join("unet").join("config.json");
        let arch = crate::models::unet::UNetConfig::from_file(&unet)
            .map(|c| crate::plan::arch_of(&c).name())
            .unwrap_or(fallback_arch);
        return Ok(detect(Some(path), arch));
    }
    let is_safetensors = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !meta.is_file() || !is_safetensors {
        return Err(crate::Error::invalid(format!(
            "{} is neither a model folder nor a .safetensors checkpoint",
            path.display()
        )));
    }
    let arch = crate::loading::single_file::inspect(path)?.arch;
    let mut license = detect(None, arch.name());
    license.source = format!("default for a single-file {arch} checkpoint (the file carries no licence)");
    Ok(license)
}

/// What a model card's front matter says about the licence.
struct CardLicense {
    /// `license:`, lowercased.
    id: String,
    /// `license_name:` (used with `license: other`).
    name: Option<String>,
    /// `license_link:`.
    link: Option<String>,
}

fn read_card_license(dir: &Path) -> Option<CardLicense> {
    let text = fs::read_to_string(dir.join("README.md")).ok()?;
    let fm = front_matter(&text)?;
    let mut id = yaml_scalar(&fm, "license")?.to_lowercase();
    let name = yaml_scalar(&fm, "license_name");
    if id == "other" {
        if let Some(n) = &name {
            if known(n).is_some() {
                id = n.to_lowercase();
            }
        }
    }
    Some(CardLicense { id, name, link: yaml_scalar(&fm, "license_link") })
}

/// The lines between a leading `---` line and the next `---` (or `...`) line.
fn front_matter(text: &str) -> Option<Vec<&str>> {
    let mut lines = text.trim_start_matches('\u{feff}').lines();
    if lines.next()?.trim_end() != "---" {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        if matches!(line.trim_end(), "---" | "...") {
            return Some(out);
        }
        out.push(line);
    }
    None
}

/// A top-level `key: value` of simple YAML, or the first item of a `key:` block list.
fn yaml_scalar(lines: &[&str], key: &str) -> Option<String> {
    let prefix = format!("{key}:");
    let i = lines.iter().position(|l| l.starts_with(&prefix))?;
    let mut value = clean_yaml_value(&lines[i][prefix.len()..]);
    if value.is_empty() {
        // `license:\n- openrail++`
        let item = lines[i + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty())?;
        value = clean_yaml_value(item.strip_prefix('-')?);
    }
    if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        // `license: [openrail++]`
        value = clean_yaml_value(inner.split(',').next()?);
    }
    (!value.is_empty()).then_some(value)
}

fn clean_yaml_value(v: &str) -> String {
    let v = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    };
    v.trim().trim_matches(|c| c == '"' || c == '\'').trim().to_string()
}

/// The first licence file in the folder, and what it is if sdgen recognises it.
fn read_license_file(dir: &Path) -> Option<(String, Option<LicenseRecord>)> {
    for name in ["LICENSE", "LICENSE.md", "LICENSE-MODEL", "LICENSE.txt"] {
        if let Ok(text) = fs::read_to_string(dir.join(name)) {
            return Some((name.to_string(), recognise(&text)));
        }
    }
    None
}

/// Tells the two CreativeML licences apart by their titles; the ++ check comes first
/// because its title contains the other's.
fn recognise(text: &str) -> Option<LicenseRecord> {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    if flat.contains("open rail++-m") || flat.contains("openrail++-m") || flat.contains("openrail++") {
        return lookup(OPENRAIL_PLUSPLUS_M, "");
    }
    if flat.contains("creativeml open rail-m") || flat.contains("creativeml openrail-m") {
        return lookup(OPENRAIL_M, "");
    }
    None
}

/// Whom a notice is about: one image (PNG chunk) or a folder of them (notice file).
#[derive(Clone, Copy)]
enum Audience {
    Image,
    Folder,
}

fn fill_notice(license: &LicenseRecord, audience: Audience) -> String {
    let (subject, object) = match audience {
        Audience::Image => ("This image was", "this image"),
        Audience::Folder => ("The images in this folder were", "these images"),
    };
    let url_part = if license.url.is_empty() { String::new() } else { format!(" ({})", license.url) };
    let (template, name, url) = match known(&license.name) {
        Some(k) => (NOTICE_TEMPLATE, k.name, k.url),
        None => (UNKNOWN_NOTICE_TEMPLATE, license.name.as_str(), license.url.as_str()),
    };
    template
        .trim()
        .replace("{subject}", subject)
        .replace("{object}", object)
        .replace("{name}", name)
        .replace("{url_part}", &url_part)
        .replace("{url}", url)
}

/// The one-paragraph notice stored in each PNG's `license` chunk: the licence's name and
/// address, and that its use restrictions (Attachment A) apply to the image.
pub fn notice(license: &LicenseRecord) -> String {
    fill_notice(license, Audience::Image)
}

/// What `sdgen license` prints: for a licence sdgen carries, its use-based restrictions and
/// the paragraphs on what it requires of users and recipients, verbatim; for any other, a
/// pointer to where to read it.
pub fn full_text(license: &LicenseRecord) -> String {
    match known(&license.name) {
        Some(k) => k.text.to_string(),
        None => format!("{}\n", fill_notice(license, Audience::Folder)),
    }
}

/// Writes [`NOTICE_FILE_NAME`] into `out_dir` unless it is already there: the notice, how the
/// licence was found, and [`full_text`]. The file is written atomically and never replaced,
/// so concurrent runs into one folder are safe.
pub fn ensure_notice_file(out_dir: &Path, license: &LicenseRecord) -> Result<()> {
    let path = out_dir.join(NOTICE_FILE_NAME);
    if path.exists() {
        return Ok(());
    }
    let body = format!(
        "{}\n\nLicence: {}\nFound: {}\n\n{}",
        fill_notice(license, Audience::Folder),
        license.name,
        license.source,
        full_text(license)
    );
    match write_file(&path, body.as_bytes(), OnExisting::Fail) {
        Ok(_) => Ok(()),
        // Another process wrote it between our check and our rename: that one stands.
        Err(_) if path.exists() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn data_files_are_the_licences() {
        let m = full_text(&lookup(OPENRAIL_M, "").unwrap());
        let pp = full_text(&lookup(OPENRAIL_PLUSPLUS_M, "").unwrap());
        for (t, title) in [(&m, "CreativeML Open RAIL-M"), (&pp, "CreativeML Open RAIL++-M")] {
            assert!(t.contains(title));
            assert!(t.contains("Attachment A"));
            assert!(t.contains("5. Use-based restrictions."));
            assert!(t.contains("To provide medical advice and medical results interpretation;"));
            assert_eq!(t.matches("\n- ").count(), 11, "Attachment A has 11 restrictions");
        }
    }

    #[test]
    fn model_card_ids() {
        let d = dir_with(&[("README.md", "---\nlicense: creativeml-openrail-m\ntags:\n- x\n---\n# card\n")]);
        let r = detect(Some(d.path()), "sd2");
        assert_eq!(r.name, OPENRAIL_M);
        assert!(r.source.contains("model card"), "{}", r.source);

        let d = dir_with(&[("README.md", "---\ntags: [a]\nlicense: \"openrail++\" # SD 2\n---\n")]);
        assert_eq!(detect(Some(d.path()), "sd1").name, OPENRAIL_PLUSPLUS_M);

        let d = dir_with(&[("README.md", "---\nlicense:\n  - openrail++\n---\n")]);
        assert_eq!(detect(Some(d.path()), "sd1").name, OPENRAIL_PLUSPLUS_M);
    }

    #[test]
    fn license_file_by_content() {
        let d = dir_with(&[("LICENSE-MODEL", "Copyright (c) 2022 Stability AI\n\nCreativeML Open RAIL++-M License\n")]);
        let r = detect(Some(d.path()), "sd1");
        assert_eq!(r.name, OPENRAIL_PLUSPLUS_M);
        assert!(r.source.contains("LICENSE-MODEL"));

        let d = dir_with(&[("LICENSE", "CreativeML Open RAIL-M\ndated August 22, 2022\n")]);
        assert_eq!(detect(Some(d.path()), "sd2").name, OPENRAIL_M);
    }

    #[test]
    fn generic_openrail_id_prefers_a_specific_license_file() {
        let d = dir_with(&[("README.md", "---\nlicense: openrail\n---\n"), ("LICENSE", "CreativeML Open RAIL-M\n")]);
        assert_eq!(detect(Some(d.path()), "sd2").name, OPENRAIL_M);
        let d = dir_with(&[("README.md", "---\nlicense: openrail\n---\n")]);
        let r = detect(Some(d.path()), "sd1");
        assert_eq!(r.name, "OpenRAIL");
        assert!(notice(&r).contains("does not carry"));
    }

    #[test]
    fn unknown_license_recorded_as_found() {
        let d = dir_with(&[("README.md", "---\nlicense: apache-2.0\n---\n")]);
        let r = detect(Some(d.path()), "sd1");
        assert_eq!(r.name, "apache-2.0");
        assert!(full_text(&r).contains("\"apache-2.0\""));

        let d = dir_with(&[(
            "README.md",
            "---\nlicense: other\nlicense_name: my-license\nlicense_link: https://x.y/L\n---\n",
        )]);
        let r = detect(Some(d.path()), "sd1");
        assert_eq!((r.name.as_str(), r.url.as_str()), ("my-license", "https://x.y/L"));
        assert!(notice(&r).contains("(https://x.y/L)"));
    }

    #[test]
    fn fallback_by_architecture() {
        let empty = dir_with(&[("README.md", "# no front matter\nlicense: openrail++\n")]);
        for (arch, name) in [("sd1", OPENRAIL_M), ("sd2", OPENRAIL_PLUSPLUS_M), ("sdxl", OPENRAIL_PLUSPLUS_M)] {
            let r = detect(Some(empty.path()), arch);
            assert_eq!(r.name, name);
            assert!(r.source.starts_with("default for"), "{}", r.source);
            assert_eq!(detect(None, arch).name, name);
        }
        assert_eq!(detect(None, "flux").name, "unknown");
    }

    #[test]
    fn notices_fill_every_placeholder() {
        for r in [lookup(OPENRAIL_M, "").unwrap(), detect(None, "flux")] {
            for text in [notice(&r), fill_notice(&r, Audience::Folder), full_text(&r)] {
                assert!(!text.contains('{') && !text.contains('}'), "{text}");
            }
        }
        let n = notice(&lookup(OPENRAIL_M, "").unwrap());
        assert!(n.contains(OPENRAIL_M) && n.contains("https://huggingface.co/spaces/CompVis/stable-diffusion-license"));
        assert!(n.contains("Attachment A"));
    }

    #[test]
    fn notice_file_written_once() {
        let d = tempfile::tempdir().unwrap();
        let lic = lookup(OPENRAIL_M, "test").unwrap();
        ensure_notice_file(d.path(), &lic).unwrap();
        let path = d.path().join(NOTICE_FILE_NAME);
        let first = fs::read_to_string(&path).unwrap();
        assert!(first.contains("The images in this folder were") && first.contains("Attachment A"));
        fs::write(&path, "edited by the user").unwrap();
        ensure_notice_file(d.path(), &lookup(OPENRAIL_PLUSPLUS_M, "test").unwrap()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "edited by the user");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "no temporary files left");
    }
}
