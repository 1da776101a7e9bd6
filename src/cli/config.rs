//! Reading the command line with its layers: clap's defaults (shown in `--help`, but only
//! defaults: they are forgotten again so a `--from` record or the config file can fill those
//! settings), `$SDGEN_MODEL`, and the config file (`~/.config/sdgen/config.json`), whose keys are
//! long flag names giving a default for any flag.
//!
//! Precedence, highest first: the command line, a `--from` record, the environment, the
//! config file, the model's and sdgen's defaults.

use super::{Cli, Command, GenerationArgs, LimitArgs, ModelArgs};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use sdgen::plan::Settings;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Config keys that name a flag but cannot sensibly be a default for every run.
const NOT_CONFIGURABLE: &[&str] = &["prompt", "from", "help", "version"];

/// Parses `std::env::args_os()` with the config file's defaults (printing help, version and
/// usage errors the way clap does, and exiting).
pub fn parse() -> anyhow::Result<Cli> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let home = env("HOME").or_else(|| env("USERPROFILE")).map(PathBuf::from);
    let config = sdgen::loading::source::config_path(&env, home.as_deref());
    parse_from(args, config.as_deref())
}

/// The clap command with `--version` naming libtorch and CUDA when asked for (finding out
/// whether CUDA is available loads libtorch's CUDA libraries, so only then).
fn command(args: &[OsString]) -> clap::Command {
    let cmd = Cli::command();
    let wants_version = args.iter().skip(1).take_while(|a| *a != "--").any(|a| a == "-V" || a == "--version");
    if !wants_version {
        return cmd;
    }
    let cuda = if tch::Cuda::is_available() {
        format!("CUDA available ({} devices)", tch::Cuda::device_count())
    } else {
        "CUDA not available".to_string()
    };
    let version = format!("{} (libtorch {}, {cuda})", sdgen::VERSION, sdgen::info::LIBTORCH_VERSION);
    cmd.version(version)
}

/// [`parse`] with the arguments and the config file's path given.
pub fn parse_from(args: Vec<OsString>, config: Option<&Path>) -> anyhow::Result<Cli> {
    let matches = command(&args).try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
    let (sub, user) = matches.subcommand().map(|(n, m)| (n.to_string(), m.clone())).unwrap_or_default();
    let (extra, from_config) = match config {
        Some(path) => config_args(path, &sub, &user)?,
        None => (Vec::new(), Vec::new()),
    };
    let matches = if extra.is_empty() {
        matches
    } else {
        // Config flags go right after the subcommand's name; the user's flags, which the
        // config never repeats, follow unchanged.
        let at = args.iter().position(|a| *a == *sub).map_or(args.len(), |i| i + 1);
        let mut merged = args[..at].to_vec();
        merged.extend(extra);
        merged.extend_from_slice(&args[at..]);
        let path = config.map(Path::display);
        command(&merged).try_get_matches_from(&merged).map_err(|e| {
            let text = e.to_string();
            let text = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("error: ");
            anyhow::anyhow!("config file {}: {text}", path.map(|p| p.to_string()).unwrap_or_default())
        })?
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some((_, m)) = matches.subcommand() {
        match &mut cli.command {
            Command::Generate(a) => {
                a.model.forget_defaults(m);
                a.gen.forget_defaults(m);
                a.limits.forget_defaults(m);
                forget(&mut a.num_images, m, "num_images");
                a.from_config = from_config;
            }
            Command::Batch(a) => {
                a.model.forget_defaults(m);
                a.gen.forget_defaults(m);
                a.limits.forget_defaults(m);
                forget(&mut a.num_images, m, "num_images");
                a.from_config = from_config;
            }
            Command::Bench(a) => a.model.forget_defaults(m),
            _ => {}
        }
    }
    Ok(cli)
}

/// Sets `slot` back to `None` when its value is clap's default rather than given.
fn forget<T>(slot: &mut Option<T>, m: &ArgMatches, id: &str) {
    if m.value_source(id) == Some(ValueSource::DefaultValue) {
        *slot = None;
    }
}

impl ModelArgs {
    fn forget_defaults(&mut self, m: &ArgMatches) {
        // From $SDGEN_MODEL: left to `ModelSource::choose`, which says where the model came from.
        if m.value_source("model") == Some(ValueSource::EnvVariable) {
            self.model = None;
        }
        forget(&mut self.device, m, "device");
        forget(&mut self.dtype, m, "dtype");
        forget(&mut self.memory.cpu_conv, m, "cpu_conv");
    }
}

impl GenerationArgs {
    fn forget_defaults(&mut self, m: &ArgMatches) {
        forget(&mut self.steps, m, "steps");
        forget(&mut self.guidance, m, "guidance");
    }
}

impl LimitArgs {
    fn forget_defaults(&mut self, m: &ArgMatches) {
        forget(&mut self.max_steps, m, "max_steps");
        forget(&mut self.max_images, m, "max_images");
        forget(&mut self.max_pixels, m, "max_pixels");
        forget(&mut self.max_side, m, "max_side");
    }
}

/// The config file's entries for subcommand `sub` as `--flag=value` arguments, leaving out
/// flags the user gave (`user`), and the ids of the arguments they set. Unknown keys are
/// warned about; keys that belong to other subcommands are skipped quietly. `"model"` is read
/// by `ModelSource::choose`, which reports it as the model's origin.
fn config_args(path: &Path, sub: &str, user: &ArgMatches) -> anyhow::Result<(Vec<OsString>, Vec<String>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(sdgen::Error::io(path, e).into()),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: not valid JSON ({e})", path.display()))?;
    let Some(entries) = value.as_object() else {
        anyhow::bail!("config file {}: expected a JSON object like {{\"steps\": 30}}", path.display());
    };
    let root = Cli::command();
    let here = root.get_subcommands().find(|c| c.get_name() == sub);
    let long_of = |c: &clap::Command, key: &str| -> Option<clap::Arg> {
        c.get_arguments()
            .find(|a| a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|al| al.contains(&key)))
            .cloned()
    };
    let mut args = Vec::new();
    let mut ids = Vec::new();
    for (key, value) in entries {
        let flag = key.trim().replace('_', "-");
        if flag == "model" {
            continue;
        }
        let known =
            NOT_CONFIGURABLE.contains(&flag.as_str()) || root.get_subcommands().any(|c| long_of(c, &flag).is_some());
        if !known {
            log::warn!(
                "config file {}: unknown key \"{key}\" ignored (keys are long flag names such as \"steps\", \"scheduler\", \"width\")",
                path.display()
            );
            continue;
        }
        if NOT_CONFIGURABLE.contains(&flag.as_str()) {
            log::warn!("config file {}: \"{key}\" cannot be a default; ignored", path.display());
            continue;
        }
        let Some(arg) = here.and_then(|c| long_of(c, &flag)) else { continue };
        let id = arg.get_id().as_str().to_string();
        if matches!(user.value_source(&id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let long = arg.get_long().unwrap_or(&flag).to_string();
        let text = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(b) if !arg.get_action().takes_values() => {
                if *b {
                    args.push(OsString::from(format!("--{long}")));
                    ids.push(id);
                }
                continue;
            }
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                log::warn!(
                    "config file {}: \"{key}\" must be a string, number or boolean, not {other}; ignored",
                    path.display()
                );
                continue;
            }
        };
        args.push(OsString::from(format!("--{long}={text}")));
        ids.push(id);
    }
    Ok((args, ids))
}

/// Moves the settings the config file gave (argument `ids`) out of `flags` into a layer of
/// their own, which a `--from` record then overrides.
pub fn take_config(flags: &mut Settings, ids: &[String]) -> Settings {
    let mut cfg = Settings::default();
    let (f, c) = (flags, &mut cfg);
    for id in ids {
        match id.as_str() {
            "negative" => c.negative_prompt = f.negative_prompt.take(),
            "steps" => c.steps = f.steps.take(),
            "guidance" => c.guidance = f.guidance.take(),
            "seed" => c.seed = f.seed.take(),
            "width" => c.width = f.width.take(),
            "height" => c.height = f.height.take(),
            "scheduler" => c.scheduler = f.scheduler.take(),
            "clip_skip" => c.clip_skip = f.clip_skip.take(),
            "num_images" => c.num_images = f.num_images.take(),
            "timestep_spacing" => c.timestep_spacing = f.timestep_spacing.take(),
            "prompt_syntax" => c.prompt_syntax = f.prompt_syntax.take(),
            "strength" => c.strength = f.strength.take(),
            "device" => c.device = f.device.take(),
            "dtype" => c.dtype = f.dtype.take(),
            "prediction_type" => c.prediction_type = f.prediction_type.take(),
            "config_dir" => c.config_dir = f.config_dir.take(),
            "arch" => c.arch = f.arch.take(),
            "offload" => c.offload = f.offload.take(),
            "vae_tiling" => c.vae_tiling = f.vae_tiling.take(),
            "cpu_conv" => c.conv = f.conv.take(),
            "vae" => c.vae = f.vae.take(),
            "original_size" => c.size_conditioning.original_size = f.size_conditioning.original_size.take(),
            "crop_coords" => c.size_conditioning.crop_coords = f.size_conditioning.crop_coords.take(),
            "target_size" => c.size_conditioning.target_size = f.size_conditioning.target_size.take(),
            "negative_original_size" => {
                c.size_conditioning.negative_original_size = f.size_conditioning.negative_original_size.take()
            }
            "negative_crop_coords" => {
                c.size_conditioning.negative_crop_coords = f.size_conditioning.negative_crop_coords.take()
            }
            "negative_target_size" => {
                c.size_conditioning.negative_target_size = f.size_conditioning.negative_target_size.take()
            }
            _ => {}
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str], config: &str) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        parse_from(args.iter().map(OsString::from).collect(), Some(&path)).unwrap()
    }

    #[test]
    fn config_gives_defaults_the_command_line_overrides() {
        let cfg = r#"{"steps": 31, "scheduler": "DDIM", "cfg_scale": 5, "offload": true, "batch_size": 4}"#;
        let Command::Generate(a) = parse(&["sdgen", "generate", "a cat", "--steps", "5"], cfg).command else {
            panic!("generate")
        };
        assert_eq!(a.gen.steps, Some(5));
        assert_eq!(a.gen.scheduler.as_deref(), Some("DDIM"));
        assert_eq!(a.gen.guidance, Some(5.0));
        assert!(a.model.memory.offload);
        let mut ids = a.from_config.clone();
        ids.sort();
        assert_eq!(ids, ["guidance", "offload", "scheduler"]);
        let Command::Batch(b) = parse(&["sdgen", "batch", "f.txt"], cfg).command else { panic!("batch") };
        assert_eq!((b.batch_size, b.gen.steps), (4, Some(31)));
    }

    #[test]
    fn clap_defaults_are_forgotten() {
        let Command::Generate(a) = parse(&["sdgen", "generate", "x"], "{}").command else { panic!("generate") };
        assert_eq!((a.gen.steps, a.gen.guidance, a.model.device.as_deref()), (None, None, None));
        assert_eq!(a.limits.max_steps, None);
    }

    /// Every example in every `--help` is a valid command line.
    #[test]
    fn help_examples_parse() {
        let root = Cli::command();
        let mut seen = 0;
        for sub in root.get_subcommands() {
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            for line in help.lines().filter_map(|l| l.trim().strip_prefix("sdgen ")) {
                // Drop the explanation in parentheses and any shell redirection or pipe.
                let line = line.split("  (").next().unwrap_or(line);
                let line = line.split(['>', '|']).next().unwrap_or(line);
                let mut words = vec!["sdgen".to_string()];
                let mut quoted = false;
                let mut word = String::new();
                for c in line.chars() {
                    match c {
                        '"' => quoted = !quoted,
                        ' ' if !quoted => words.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
                        c => word.push(c),
                    }
                }
                words.extend((!word.is_empty()).then_some(word));
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("example {words:?} does not parse: {e}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 18, "{seen} examples");
    }

    #[test]
    fn config_layer_sits_under_the_record() {
        let mut flags = Settings { steps: Some(9), width: Some(64), ..Settings::default() };
        let cfg = take_config(&mut flags, &["steps".to_string()]);
        assert_eq!((flags.steps, flags.width, cfg.steps), (None, Some(64), Some(9)));
    }
}
