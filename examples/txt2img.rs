//! sdgen as a library: load a model folder, generate one image, save it as a PNG with its
//! parameters, record and licence chunks.
//!
//!     cargo run --example txt2img -- weights/tiny-sd out/

use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::Request;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "weights/tiny-sd".into());
    let out = args.next().unwrap_or_else(|| "out".into());

    let pipe = Pipeline::load(&LoadOptions {
        model: model.into(),
        device: "auto".parse()?,
        dtype: "auto".parse()?,
        ..LoadOptions::default()
    })?;

    let request = Request {
        prompt: "a lighthouse on a cliff at dawn, oil painting".into(),
        negative_prompt: Some("blurry".into()),
        seed: 42,
        steps: 20,
        guidance: 7.5,
        width: 256,
        height: 256,
        scheduler: "Euler a".into(),
        ..Request::default()
    };

    let images = pipe.generate(&request, &mut |p| eprint!("\rstep {}/{}", p.step, p.steps))?;
    eprintln!();
    let timestamp = sdgen::save::run_timestamp();
    for (i, generated) in images.iter().enumerate() {
        let path = sdgen::save::save(generated, out.as_ref(), None, i, &timestamp, false)?;
        println!("{}", path.display());
    }
    Ok(())
}
