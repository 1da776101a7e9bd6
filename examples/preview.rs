//! Previews through the step callback: every step's latents become a small image
//! (`Pipeline::preview`), written as `step-NN.png`, then the finished image as `image.png`.
//! Without a tiny autoencoder the previews are A1111's "Approx cheap" (1/8 of the size); with
//! one (a TAESD diffusers folder for SD 1.x/2.x, TAESDXL for SDXL) they are full size.
//!
//!     cargo run --example preview -- weights/tiny-sd out/ [weights/tiny-taesd]

use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::Request;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "weights/tiny-sd".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "out".into()));
    let taesd = args.next();

    let mut pipe = Pipeline::load(&LoadOptions {
        model: model.into(),
        device: "auto".parse()?,
        dtype: "auto".parse()?,
        ..LoadOptions::default()
    })?;
    if let Some(dir) = taesd {
        pipe.load_preview_vae(dir.as_ref(), None)?;
    }
    sdgen::output::create_folder(&out)?;

    let request = Request {
        prompt: "a lighthouse on a cliff at dawn, oil painting".into(),
        seed: 42,
        steps: 12,
        width: 256,
        height: 256,
        scheduler: "Euler a".into(),
        ..Request::default()
    };

    // The callback cannot return an error: keep the first one and stop the run with it.
    let mut failed = None;
    let images = pipe.generate(&request, &mut |p| {
        let written = pipe.preview(p.latents).and_then(|previews| {
            let png = sdgen::output::encode_png(&previews[0], &[])?;
            let path = out.join(format!("step-{:02}.png", p.sampling_step));
            sdgen::output::write_file(&path, &png, sdgen::output::OnExisting::Overwrite)
        });
        match written {
            Ok(path) => eprintln!("step {}/{}: {}", p.sampling_step, p.sampling_steps, path.display()),
            Err(e) => {
                failed.get_or_insert(e);
                p.cancel();
            }
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    let timestamp = sdgen::save::run_timestamp();
    let path = sdgen::save::save(&images?[0], &out, Some("image"), 0, &timestamp, true)?;
    println!("{}", path.display());
    Ok(())
}
