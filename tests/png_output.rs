//! PNG output checked from the outside: files are read back with a small PNG chunk parser
//! written here (signature, chunk CRCs, tEXt/iTXt decoding), not with the `png` crate that
//! wrote them, and the parameters line is split with A1111's own regex.

use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;
use sdgen::output::{
    self, license, naming, read_record, read_text_chunks, save_png, write_png, NameFields, OnExisting, SaveOptions,
    Template,
};
use sdgen::request::ModelRecord;
use sdgen::{Image, Record, Request};

// ---------------------------------------------------------------------------------------
// An independent PNG chunk reader.

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// CRC-32 as in the PNG spec (ISO 3309, polynomial 0xEDB88320, reflected), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[derive(Debug)]
struct Chunk {
    kind: String,
    data: Vec<u8>,
}

/// Splits a PNG into chunks, checking the signature, every length and every CRC.
fn chunks(path: &Path) -> Vec<Chunk> {
    let bytes = fs::read(path).unwrap();
    assert_eq!(bytes[..8], SIGNATURE, "PNG signature");
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind_and_data = &bytes[at + 4..at + 8 + len];
        let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(crc32(kind_and_data), crc, "CRC of chunk at byte {at}");
        out.push(Chunk {
            kind: String::from_utf8(kind_and_data[..4].to_vec()).unwrap(),
            data: kind_and_data[4..].to_vec(),
        });
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "no trailing bytes");
    assert_eq!(out.first().map(|c| c.kind.as_str()), Some("IHDR"));
    assert_eq!(out.last().map(|c| c.kind.as_str()), Some("IEND"));
    out
}

/// A text chunk as decoded here: (chunk type, keyword, text).
fn text_chunks(path: &Path) -> Vec<(String, String, String)> {
    let latin1 = |b: &[u8]| b.iter().map(|&x| x as char).collect::<String>();
    let mut out = Vec::new();
    for c in chunks(path) {
        match c.kind.as_str() {
            "tEXt" => {
                let nul = c.data.iter().position(|&b| b == 0).unwrap();
                // Latin-1: each byte is the code point.
                out.push((c.kind.clone(), latin1(&c.data[..nul]), latin1(&c.data[nul + 1..])));
            }
            "iTXt" => {
                let d = &c.data;
                let k_end = d.iter().position(|&b| b == 0).unwrap();
                let (flag, method) = (d[k_end + 1], d[k_end + 2]);
                assert_eq!((flag, method), (0, 0), "sdgen writes iTXt uncompressed");
                let rest = &d[k_end + 3..];
                let lang_end = rest.iter().position(|&b| b == 0).unwrap();
                let rest = &rest[lang_end + 1..];
                let tk_end = rest.iter().position(|&b| b == 0).unwrap();
                let text = String::from_utf8(rest[tk_end + 1..].to_vec()).unwrap();
                out.push((c.kind.clone(), latin1(&d[..k_end]), text));
            }
            "zTXt" => panic!("sdgen does not write zTXt"),
            _ => {}
        }
    }
    out
}

fn chunk_text<'a>(chunks: &'a [(String, String, String)], key: &str) -> (&'a str, &'a str) {
    let c = chunks.iter().find(|(_, k, _)| k == key).unwrap_or_else(|| panic!("no {key} chunk in {chunks:?}"));
    (c.0.as_str(), c.2.as_str())
}

/// A1111's `re_param_code`, copied from modules/infotext_utils.py.
fn a1111_params(line: &str) -> Vec<(String, String)> {
    let re = Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).unwrap();
    re.captures_iter(line).map(|c| (c[1].to_string(), c[2].to_string())).collect()
}

// ---------------------------------------------------------------------------------------
// Fixtures.

fn image(width: u32, height: u32) -> Image {
    let rgb = (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect();
    Image { width, height, rgb }
}

fn record(prompt: &str, negative: Option<&str>) -> Record {
    Record {
        sdgen_version: "0.1.0".into(),
        request: Request {
            prompt: prompt.into(),
            negative_prompt: negative.map(Into::into),
            seed: 1234,
            steps: 20,
            guidance: 7.0,
            width: 8,
            height: 4,
            scheduler: "euler_a".into(),
            num_images: 1,
            clip_skip: Some(2),
            timestep_spacing: None,
            size_conditioning: Default::default(),
            init_image: None,
            mask: None,
            strength: None,
            prompt_syntax: sdgen::request::PromptSyntax::Plain,
            loras: Vec::new(),
        },
        model: ModelRecord {
            source: "/models/sd15".into(),
            name: "v1-5-pruned".into(),
            hash: Some("6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa".into()),
            architecture: sdgen::plan::Arch::Sd1,
            license: license::detect(None, "sd1"),
            files: Vec::new(),
            config_dir: None,
            arch_forced: false,
            embeddings: Vec::new(),
            vae: None,
        },
        sampler: None,
        prediction_type: None,
        latent_shape: Vec::new(),
        vae_tiling: None,
        scheduler_config: serde_json::json!({"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012}),
        device: "cpu".into(),
        dtype: "f32".into(),
        offload: false,
        conv: Default::default(),
    }
}

const EULER_A: SaveOptions<'static> =
    SaveOptions { sampler_a1111: "Euler a", schedule_type: Some("Karras"), on_existing: OnExisting::Fail };

/// Files in `dir` whose names show they are leftover temporaries: every hidden file.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------

#[test]
fn round_trip_ascii() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.png");
    let rec = record("a red fox, at dawn", Some("blurry, lowres"));
    let written = save_png(&path, &image(8, 4), &rec, &EULER_A).unwrap();
    assert_eq!(written, path);

    let chunks = chunks(&path);
    let ihdr = &chunks[0].data;
    assert_eq!(u32::from_be_bytes(ihdr[0..4].try_into().unwrap()), 8);
    assert_eq!(u32::from_be_bytes(ihdr[4..8].try_into().unwrap()), 4);
    assert_eq!((ihdr[8], ihdr[9]), (8, 2), "8-bit RGB");
    let order: Vec<&str> = chunks.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(&order[1..4], ["tEXt", "tEXt", "tEXt"], "{order:?}");
    assert_eq!(order[4], "IDAT", "{order:?}");

    let texts = text_chunks(&path);
    let keys: Vec<&str> = texts.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(keys, ["parameters", "sdgen", "license"]);

    let (kind, params) = chunk_text(&texts, "parameters");
    assert_eq!(kind, "tEXt");
    assert_eq!(
        params,
        "a red fox, at dawn\nNegative prompt: blurry, lowres\n\
         Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 8x4, \
         Model hash: 6ce0161689, Model: v1-5-pruned, Clip skip: 2, RNG: CPU, Version: sdgen 0.1.0"
    );
    let last = params.lines().last().unwrap();
    let pairs = a1111_params(last);
    let expected = [
        ("Steps", "20"),
        ("Sampler", "Euler a"),
        ("Schedule type", "Karras"),
        ("CFG scale", "7"),
        ("Seed", "1234"),
        ("Size", "8x4"),
        ("Model hash", "6ce0161689"),
        ("Model", "v1-5-pruned"),
        ("Clip skip", "2"),
        ("RNG", "CPU"),
        ("Version", "sdgen 0.1.0"),
    ];
    assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));

    // The library's own parser agrees.
    let parsed = output::parse_parameters(params).unwrap();
    assert_eq!(parsed.prompt, "a red fox, at dawn");
    assert_eq!(parsed.negative_prompt.as_deref(), Some("blurry, lowres"));
    assert_eq!(parsed.params, pairs);

    let (_, json) = chunk_text(&texts, "sdgen");
    let from_json: Record = serde_json::from_str(json).unwrap();
    assert_eq!(from_json, rec);
    assert_eq!(read_record(&path).unwrap(), rec);

    let (_, notice) = chunk_text(&texts, "license");
    assert!(notice.contains("CreativeML OpenRAIL-M"), "{notice}");
    assert!(notice.contains("https://huggingface.co/spaces/CompVis/stable-diffusion-license"), "{notice}");
    assert!(notice.contains("Attachment A"), "{notice}");

    // The library's reader gives the same chunks as the independent one.
    let lib: Vec<(String, String)> = read_text_chunks(&path).unwrap();
    assert_eq!(lib, texts.iter().map(|(_, k, t)| (k.clone(), t.clone())).collect::<Vec<_>>());

    // Pixels survive (read with the png crate: this part is not about text).
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    assert_eq!(buf, image(8, 4).rgb);

    // Permissions as for any new file (umask applied), not a temporary file's private 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        fs::File::create(&plain).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        assert_eq!(mode(&dir.path().join(output::NOTICE_FILE_NAME)), mode(&plain));
        fs::remove_file(plain).unwrap();
    }

    let notice_file = fs::read_to_string(dir.path().join(output::NOTICE_FILE_NAME)).unwrap();
    assert!(notice_file.contains("You agree not to use the Model or Derivatives of the Model:"));
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn unicode_goes_to_itxt_latin1_stays_text() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "一只猫 🐱 在雨中, watercolor";
    let negative = "ぼやけた";
    let path = save_png(&dir.path().join("u.png"), &image(2, 2), &record(prompt, Some(negative)), &EULER_A).unwrap();
    let texts = text_chunks(&path);
    let (kind, params) = chunk_text(&texts, "parameters");
    assert_eq!(kind, "iTXt");
    assert!(params.starts_with(&format!("{prompt}\nNegative prompt: {negative}\nSteps: 20, ")), "{params}");
    assert_eq!(chunk_text(&texts, "sdgen").0, "iTXt", "JSON keeps non-ASCII as is");
    assert_eq!(chunk_text(&texts, "license").0, "tEXt");
    assert_eq!(read_record(&path).unwrap().request.prompt, prompt);

    // Latin-1 text is stored as Latin-1 bytes in tEXt, not as UTF-8.
    let path = save_png(&dir.path().join("l.png"), &image(2, 2), &record("café crème", None), &EULER_A).unwrap();
    let texts = text_chunks(&path);
    let (kind, params) = chunk_text(&texts, "parameters");
    assert_eq!(kind, "tEXt");
    assert!(params.starts_with("café crème\nNegative prompt: \nSteps:"), "{params}");
    let raw = chunks(&path).into_iter().find(|c| c.kind == "tEXt").unwrap().data;
    assert!(raw.windows(4).any(|w| w == b"caf\xe9"), "é as the single byte 0xE9");
    assert_eq!(read_record(&path).unwrap().request.prompt, "café crème");
}

/// ComfyUI's A1111 importer builds nothing without the negative line, and A1111 reads a
/// missing "Schedule type" as "Automatic" (Karras for DPM++ 2M): both are always written.
#[test]
fn negative_line_schedule_type_and_rng_are_always_written() {
    for negative in [None, Some("")] {
        let text = output::parameters_text(&record("a cat", negative), "Euler a", None);
        assert!(
            text.starts_with(
                "a cat\nNegative prompt: \nSteps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, "
            ),
            "{text}"
        );
        assert!(text.contains(", RNG: CPU, Version: sdgen"), "{text}");
        assert_eq!(text.lines().count(), 3);
        let parsed = output::parse_parameters(&text).unwrap();
        assert_eq!((parsed.prompt.as_str(), parsed.negative_prompt.as_deref()), ("a cat", Some("")));
        assert_eq!(parsed.get("Schedule type"), Some("Uniform"));
    }
    // An empty prompt leaves no blank first line (A1111 strips the text).
    let text = output::parameters_text(&record("", None), "Euler a", None);
    assert!(text.starts_with("Negative prompt: \nSteps: 20"), "{text}");
}

#[test]
fn optional_fields() {
    let mut rec = record("p", None);
    rec.request.clip_skip = Some(1);
    rec.request.guidance = 7.5;
    rec.model.hash = None;
    let text = output::parameters_text(&rec, "DPM++ 2M", None);
    assert_eq!(
        text,
        "p\nNegative prompt: \nSteps: 20, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7.5, Seed: 1234, \
         Size: 8x4, Model: v1-5-pruned, RNG: CPU, Version: sdgen 0.1.0"
    );
    rec.request.clip_skip = None;
    assert_eq!(output::parameters_text(&rec, "DPM++ 2M", None), text);
}

#[test]
fn values_with_separators_are_quoted_like_a1111() {
    let mut rec = record("p", None);
    rec.model.name = "my, model: v2\nbeta \"x\"".into();
    let dir = tempfile::tempdir().unwrap();
    let path = save_png(&dir.path().join("q.png"), &image(1, 1), &rec, &EULER_A).unwrap();
    let texts = text_chunks(&path);
    let (_, params) = chunk_text(&texts, "parameters");
    // json.dumps("my, model: v2\nbeta \"x\"", ensure_ascii=False)
    assert!(params.contains(r#"Model: "my, model: v2\nbeta \"x\"", Clip skip: 2"#), "{params}");
    assert_eq!(params.lines().count(), 3, "the newline is escaped, not written");
    let pairs = a1111_params(params.lines().last().unwrap());
    let model = pairs.iter().find(|(k, _)| k == "Model").unwrap();
    let unquoted: String = serde_json::from_str(&model.1).unwrap();
    assert_eq!(unquoted, rec.model.name);
    assert_eq!(pairs.iter().find(|(k, _)| k == "Clip skip").unwrap().1, "2", "later pairs unaffected");
    assert_eq!(output::parse_parameters(params).unwrap().get("Model"), Some(rec.model.name.as_str()));
}

#[test]
fn no_overwrite_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    fs::write(&path, b"precious").unwrap();
    let rec = record("p", None);

    let err = save_png(&path, &image(2, 2), &rec, &EULER_A).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"precious");
    assert!(temp_files(dir.path()).is_empty(), "temp file removed after the refused rename");

    let suffixed = SaveOptions { on_existing: OnExisting::AddSuffix, ..EULER_A };
    let p1 = save_png(&path, &image(2, 2), &rec, &suffixed).unwrap();
    let p2 = save_png(&path, &image(2, 2), &rec, &suffixed).unwrap();
    assert_eq!((p1, p2), (dir.path().join("x-1.png"), dir.path().join("x-2.png")));
    assert_eq!(fs::read(&path).unwrap(), b"precious");

    let overwrite = SaveOptions { on_existing: OnExisting::Overwrite, ..EULER_A };
    assert_eq!(save_png(&path, &image(2, 2), &rec, &overwrite).unwrap(), path);
    assert_eq!(fs::read(&path).unwrap()[..8], SIGNATURE);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn unwritable_folder_is_a_clear_error_and_leaves_nothing() {
    // Tests run as root, so permissions cannot make a folder unwritable; a folder below a
    // regular file cannot exist at all.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    fs::write(&file, b"x").unwrap();
    let target = file.join("sub").join("a.png");

    let err = write_png(&target, &image(2, 2), &[("k", "v")], OnExisting::Fail).unwrap_err().to_string();
    assert!(err.contains(&file.join("sub").display().to_string()), "{err}");
    let err = save_png(&target, &image(2, 2), &record("p", None), &EULER_A).unwrap_err().to_string();
    assert!(err.contains("not-a-folder"), "{err}");

    let missing = dir.path().join("missing").join("a.png");
    let err = write_png(&missing, &image(2, 2), &[("k", "v")], OnExisting::Fail).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");

    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["not-a-folder"]);
}

#[test]
fn save_creates_subfolders_from_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let t = Template::parse("run1/{prompt}-{seed}").unwrap();
    let f = NameFields { index: 0, seed: 42, prompt: "A Cat!", timestamp: "20261126-130501" };
    let path = t.resolve(dir.path(), &f).unwrap();
    assert_eq!(path, dir.path().join("run1").join("a_cat-42.png"));
    let written = save_png(&path, &image(2, 2), &record("A Cat!", None), &EULER_A).unwrap();
    assert_eq!(written, path);
    assert!(dir.path().join("run1").join(output::NOTICE_FILE_NAME).exists());
}

#[test]
fn naming_templates_cannot_escape() {
    for bad in ["../{seed}", "/etc/{seed}", "a/../../{seed}", "{seed}\\x"] {
        let err = Template::parse(bad).unwrap_err().to_string();
        assert!(err.contains("output name template"), "{err}");
    }
    let err = Template::parse("{model}").unwrap_err().to_string();
    assert!(
        err.contains("{index}") && err.contains("{seed}") && err.contains("{prompt}") && err.contains("{timestamp}")
    );

    let t = Template::parse("{prompt}").unwrap();
    let f = NameFields { index: 1, seed: 1, prompt: "../../../../etc/passwd", timestamp: "t" };
    let out = Path::new("/srv/out");
    let p = t.resolve(out, &f).unwrap();
    assert_eq!(p.parent(), Some(out));

    // The default template includes time, index and seed.
    let d = Template::parse(naming::DEFAULT_TEMPLATE).unwrap();
    let name = d.render(&NameFields { index: 3, seed: 99, prompt: "x", timestamp: "20261126-130501" }).unwrap();
    assert_eq!(name, PathBuf::from("20261126-130501-00003-99.png"));
}

#[test]
fn reads_ztxt_and_chunks_after_the_image() {
    // A file made by another writer: zTXt before the image data, tEXt and iTXt after it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.png");
    {
        let file = fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(file, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.add_ztxt_chunk("comment".into(), "compressed text, long long long long".into()).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[1, 2, 3]).unwrap();
        w.write_text_chunk(&png::text_metadata::TEXtChunk::new("late", "after IDAT")).unwrap();
        w.write_text_chunk(&png::text_metadata::ITXtChunk::new("späti", "ünïcödé 猫")).unwrap();
        w.finish().unwrap();
    }
    let mut got = read_text_chunks(&path).unwrap();
    got.sort();
    let mut want = vec![
        ("comment".to_string(), "compressed text, long long long long".to_string()),
        ("late".to_string(), "after IDAT".to_string()),
        ("späti".to_string(), "ünïcödé 猫".to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    // The independent reader sees the late chunks too (it skips the zTXt).
    let late: Vec<String> = text_chunks_lenient(&path);
    assert_eq!(late, ["late", "späti"]);

    let err = read_record(&path).unwrap_err().to_string();
    assert!(err.contains("no `sdgen` text chunk"), "{err}");
    let err = read_record(&dir.path().join("nope.png")).unwrap_err().to_string();
    assert!(err.contains("nope.png"), "{err}");
}

/// Keywords of the tEXt/iTXt chunks that come after IDAT.
fn text_chunks_lenient(path: &Path) -> Vec<String> {
    let all = chunks(path);
    let idat = all.iter().position(|c| c.kind == "IDAT").unwrap();
    all[idat..]
        .iter()
        .filter(|c| c.kind == "tEXt" || c.kind == "iTXt")
        .map(|c| c.data[..c.data.iter().position(|&b| b == 0).unwrap()].iter().map(|&b| b as char).collect())
        .collect()
}
