//! sdgen as a library, starting from an image: img2img (the init image repainted with a
//! strength) and inpainting (only the mask's white part repainted). The init image here is
//! made in memory; `InputImage::open` reads one from a file instead.
//!
//!     cargo run --example img2img -- weights/tiny-sd out/

use sdgen::init_image::InputImage;
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::request::Image;
use sdgen::Request;

/// A 256×256 sunset gradient, and a mask whose middle square is white (repaint).
fn inputs() -> (Image, Image) {
    let (w, h) = (256u32, 256u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    let mut mask = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            rgb.extend([255 - (y / 2) as u8, (x / 2) as u8 + 64, (y / 3) as u8 + 40]);
            let inside = (64..192).contains(&x) && (64..192).contains(&y);
            mask.extend([if inside { 255 } else { 0 }; 3]);
        }
    }
    (Image { width: w, height: h, rgb }, Image { width: w, height: h, rgb: mask })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "weights/tiny-sd".into());
    let out = args.next().unwrap_or_else(|| "out".into());
    let pipe = Pipeline::load(&LoadOptions { model: model.into(), ..LoadOptions::default() })?;

    let (init, mask) = inputs();
    let img2img = Request {
        prompt: "a lighthouse on a cliff at sunset, oil painting".into(),
        seed: 42,
        steps: 20,
        width: init.width,
        height: init.height,
        scheduler: "Euler a".into(),
        init_image: Some(InputImage::from_image("sunset-gradient", init)?),
        // Only the last 60% of the schedule runs: the result keeps the image's layout.
        strength: Some(0.6),
        ..Request::default()
    };
    let inpaint =
        Request { mask: Some(InputImage::from_image("middle-square", mask)?), strength: Some(1.0), ..img2img.clone() };

    let timestamp = sdgen::save::run_timestamp();
    for (i, request) in [img2img, inpaint].iter().enumerate() {
        for generated in pipe.generate(request, &mut |_| {})? {
            println!("{}", sdgen::save::save(&generated, out.as_ref(), None, i, &timestamp, false)?.display());
        }
    }
    Ok(())
}
