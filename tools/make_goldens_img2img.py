"""Record diffusers' img2img and inpainting outputs on the tiny models as goldens for sdgen's tests.

Runs the real diffusers pipelines (CPU, fp32, one thread, deterministic algorithms):
`StableDiffusionImg2ImgPipeline` on weights/tiny-sd, `StableDiffusionInpaintPipeline` on
weights/tiny-sd-inpaint (9-channel UNet: mask and masked-image latents concatenated to the UNet
input) and on weights/tiny-sd (4-channel UNet: the known region re-noised and blended back after
every step), `StableDiffusionXLImg2ImgPipeline` on weights/tiny-sdxl and
`StableDiffusionXLInpaintPipeline` on weights/tiny-sdxl-inpaint and weights/tiny-sdxl, with Euler,
Euler ancestral and DDIM, several strengths, and inputs from tests/fixtures/img2img (two of them
need a resize). Per case it stores what the pipeline actually used: the preprocessed image and
mask, the mask at latent size, the VAE encoder's distribution, noise draws and sampled latents,
the noise, the timesteps that ran, the latents after noising and after every step, the image.

The script does not only record. Every random draw from the request's generator is logged where
it happens (VAE encoder sample, initial noise, ancestral step noise) and then replayed by hand
from a fresh `manual_seed(seed)` generator in the order tests/fixtures/goldens-img2img/README.md
documents; the preprocessing is redone with Pillow as the README describes; the noising, the
9-channel UNet input and the 4-channel blend are recomputed. Any difference stops the script.
It also records how each pipeline fails when the strength is so low that no step runs.

    /work/refenv/bin/python tools/make_goldens_img2img.py [OUT_DIR]   # default tests/fixtures/goldens-img2img

Inputs come from tools/make_img2img_inputs.py, models from tools/make_tiny_sd.py,
make_tiny_sdxl.py and make_tiny_inpaint.py.
"""

import argparse
import functools
import json
import logging
import os
import sys

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import PROMPTS, f32, versions  # noqa: E402
from make_scheduler_pipeline_goldens import json_safe  # noqa: E402  (-inf as null, sorted defaults)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUTS = "tests/fixtures/img2img"

SEED = 0
SD_GUIDANCE = 7.5
XL_GUIDANCE = 5.0
PLAIN = PROMPTS["plain"][0]
POSITIVE, NEGATIVE = PROMPTS["negative"]

SD_I2I = "StableDiffusionImg2ImgPipeline"
SD_INP = "StableDiffusionInpaintPipeline"
XL_I2I = "StableDiffusionXLImg2ImgPipeline"
XL_INP = "StableDiffusionXLInpaintPipeline"
XL_PIPELINES = (XL_I2I, XL_INP)
INPAINT_PIPELINES = (SD_INP, XL_INP)

EULER = "EulerDiscreteScheduler"
EULER_A = "EulerAncestralDiscreteScheduler"
DDIM = "DDIMScheduler"
SCHEDULER_CLASSES = (EULER, EULER_A, DDIM)

INIT = f"{INPUTS}/init_64x96.png"
INIT_ODD = f"{INPUTS}/init_72x100.png"
MASK = f"{INPUTS}/mask_64x96.png"
MASK_SQUARE = f"{INPUTS}/mask_40x40.png"


def case(cid, pipeline, model, scheduler, strength, steps=4, negative=False, init=INIT, mask=None, size=(64, 96)):
    """size is (width, height) as passed to the pipeline, or None for "not passed"."""
    guidance = XL_GUIDANCE if pipeline in XL_PIPELINES else SD_GUIDANCE
    if pipeline in INPAINT_PIPELINES and mask is None:
        mask = MASK
    if pipeline not in INPAINT_PIPELINES:
        size = None  # the img2img pipelines take their size from the image
    return {
        "id": cid,
        "pipeline": pipeline,
        "model": model,
        "scheduler": scheduler,
        "strength": strength,
        "steps": steps,
        "guidance": guidance,
        "prompt": POSITIVE if negative else PLAIN,
        "negative_prompt": NEGATIVE if negative else None,
        "init_image": init,
        "mask": mask,
        "width": None if size is None else size[0],
        "height": None if size is None else size[1],
    }


SD, SD9, XL, XL9 = "weights/tiny-sd", "weights/tiny-sd-inpaint", "weights/tiny-sdxl", "weights/tiny-sdxl-inpaint"

CASES = [
    # img2img, SD 1.x. 4 x 0.75 = 3 steps; 5 x 0.75 = 3.75 -> 3; 5 x 0.5 = 2.5 -> 2; 4 x 0.5 = 2.
    case("sd_i2i_euler_s075_4_neg", SD_I2I, SD, EULER, 0.75, 4, negative=True),
    case("sd_i2i_euler_s1_4", SD_I2I, SD, EULER, 1.0, 4),
    case("sd_i2i_eulera_s075_5_neg", SD_I2I, SD, EULER_A, 0.75, 5, negative=True),
    case("sd_i2i_eulera_s05_4", SD_I2I, SD, EULER_A, 0.5, 4),
    case("sd_i2i_ddim_s075_4", SD_I2I, SD, DDIM, 0.75, 4),
    case("sd_i2i_ddim_s05_5_neg", SD_I2I, SD, DDIM, 0.5, 5, negative=True),
    # 72x100 with no size: diffusers rounds down to 72x96 and resizes (Lanczos) to it.
    case("sd_i2i_resize_72x100_euler_s075_4", SD_I2I, SD, EULER, 0.75, 4, init=INIT_ODD),
    # inpainting, 9-channel UNet.
    case("sd_inp9_euler_s1_neg", SD_INP, SD9, EULER, 1.0, negative=True),
    case("sd_inp9_euler_s075", SD_INP, SD9, EULER, 0.75),
    case("sd_inp9_eulera_s075_neg", SD_INP, SD9, EULER_A, 0.75, negative=True),
    # the 40x40 mask is resized (Lanczos) to 64x96 before binarizing.
    case("sd_inp9_resize_mask40_eulera_s1", SD_INP, SD9, EULER_A, 1.0, mask=MASK_SQUARE),
    # inpainting with an ordinary 4-channel UNet: re-noise and blend the known region.
    case("sd_inp4_euler_s1_neg", SD_INP, SD, EULER, 1.0, negative=True),
    case("sd_inp4_eulera_s06", SD_INP, SD, EULER_A, 0.6),
    case("sd_inp4_ddim_s06_neg", SD_INP, SD, DDIM, 0.6, negative=True),
    # SDXL img2img: 4 x 0.3 (the pipeline's default strength) = 1.2 -> 1 step.
    case("xl_i2i_euler_s075_neg", XL_I2I, XL, EULER, 0.75, negative=True),
    case("xl_i2i_euler_s03", XL_I2I, XL, EULER, 0.3),
    case("xl_i2i_eulera_s075", XL_I2I, XL, EULER_A, 0.75),
    # SDXL inpainting; 0.9999 is the pipeline's default strength (3 of 4 steps run, image encoded).
    case("xl_inp9_euler_s1_neg", XL_INP, XL9, EULER, 1.0, negative=True),
    case("xl_inp9_eulera_s09999", XL_INP, XL9, EULER_A, 0.9999),
    case("xl_inp4_euler_s09999_neg", XL_INP, XL, EULER, 0.9999, negative=True),
    case("xl_inp4_eulera_s1", XL_INP, XL, EULER_A, 1.0),
]

# Strength so low that int(steps * strength) == 0: every pipeline kind is tried and must raise.
NO_STEP = [
    (SD_I2I, SD, 0.1),
    (SD_INP, SD9, 0.1),
    (SD_INP, SD, 0.1),
    (XL_I2I, XL, 0.1),
    (XL_INP, XL9, 0.1),
    (SD_I2I, SD, 0.0),
]


def module_of(pipeline):
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as sd_i2i
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as sd_inp
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as xl_i2i
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint as xl_inp

    return {SD_I2I: sd_i2i, SD_INP: sd_inp, XL_I2I: xl_i2i, XL_INP: xl_inp}[pipeline]


_PIPES = {}


def load_pipe(pipeline, model):
    """One pipeline per (class, folder) on CPU, fp32, one thread, deterministic, quiet."""
    key = (pipeline, model)
    if key not in _PIPES:
        import diffusers

        cls = getattr(diffusers, pipeline)
        kwargs = {"add_watermarker": False} if pipeline in XL_PIPELINES else {}
        pipe = cls.from_pretrained(
            os.path.join(REPO, model), torch_dtype=torch.float32, local_files_only=True, **kwargs
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler_base_config = pipe.scheduler.config
        _PIPES[key] = pipe
    return _PIPES[key]


def load_input(rel):
    """What a diffusers user passes: `diffusers.utils.load_image` (EXIF transpose, convert RGB)."""
    from diffusers.utils import load_image

    return load_image(os.path.join(REPO, rel))


def expected_preprocess(c, processed_hw):
    """The preprocessing redone with Pillow as the README says; returns (image_in, mask_resized)."""
    h, w = processed_hw
    img = PIL.Image.open(os.path.join(REPO, c["init_image"])).convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), resample=PIL.Image.LANCZOS)
    image_in = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    image_in = 2.0 * image_in - 1.0
    mask_resized = None
    if c["mask"] is not None:
        m = PIL.Image.open(os.path.join(REPO, c["mask"])).convert("L")
        if m.size != (w, h):
            m = m.resize((w, h), resample=PIL.Image.LANCZOS)
        mask_resized = torch.from_numpy(np.asarray(m).astype(np.float32) / 255.0)[None, None]
    return image_in.contiguous(), mask_resized


class Capture:
    """Wraps the pipeline's functions for one call and restores them afterwards."""

    def __init__(self, pipe, pipeline):
        import diffusers.models.autoencoders.vae as vae_mod
        import diffusers.schedulers.scheduling_ddim as ddim_mod
        import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_mod

        self.pipe = pipe
        self.draws = []  # (source, tensor) in the order the generator gave them
        self.encodes = []  # (input image, mean, std) per VAE encode
        self.add_noise = []  # (timesteps, output)
        self.steps = []  # scheduler.step outputs (before any blend)
        self.unet_inputs = []
        self.time_ids = []
        self.prepared = None
        self.mask_prepared = None
        self.preprocessed = []
        self.patches = []
        for mod, source in ((module_of(pipeline), "noise"), (vae_mod, "encode"), (ancestral_mod, "step"),
                            (ddim_mod, "step")):
            self._patch_randn(mod, source)
        self._wrap(pipe, "prepare_latents", self._on_prepare)
        if hasattr(pipe, "prepare_mask_latents"):
            self._wrap(pipe, "prepare_mask_latents", self._on_prepare_mask)
        self._wrap(pipe.image_processor, "preprocess", self._on_preprocess("image"))
        if hasattr(pipe, "mask_processor"):
            self._wrap(pipe.mask_processor, "preprocess", self._on_preprocess("mask"))
        self._wrap(pipe.vae, "encode", self._on_encode)
        self._wrap(pipe.scheduler, "add_noise", self._on_add_noise)
        self._wrap(pipe.scheduler, "step", self._on_step)
        self.handle = pipe.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True)

    def _patch_randn(self, mod, source):
        orig = mod.randn_tensor

        def randn(*args, **kwargs):
            out = orig(*args, **kwargs)
            self.draws.append((source, out.clone()))
            return out

        mod.randn_tensor = randn
        self.patches.append((mod, "randn_tensor", orig))

    def _wrap(self, obj, name, after):
        orig = getattr(obj, name)

        # functools.wraps keeps the signature visible: the pipelines pass `generator` to
        # scheduler.step only if inspect.signature shows that parameter.
        @functools.wraps(orig)
        def wrapped(*args, **kwargs):
            out = orig(*args, **kwargs)
            after(out, args, kwargs)
            return out

        setattr(obj, name, wrapped)
        self.patches.append((obj, name, None))

    def _on_prepare(self, out, _args, _kwargs):
        self.prepared = out

    def _on_prepare_mask(self, out, _args, _kwargs):
        self.mask_prepared = out

    def _on_preprocess(self, kind):
        def after(out, _args, _kwargs):
            self.preprocessed.append((kind, out.clone()))

        return after

    def _on_encode(self, out, args, kwargs):
        x = kwargs.get("x", args[0] if args else None)
        dist = out.latent_dist
        self.encodes.append((x.clone(), dist.mean.clone(), dist.std.clone()))

    def _on_add_noise(self, out, args, kwargs):
        self.add_noise.append((args[2].clone(), out.clone()))

    def _on_step(self, out, _args, _kwargs):
        self.steps.append((out[0] if isinstance(out, tuple) else out.prev_sample).clone())

    def _on_unet(self, _module, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        self.unet_inputs.append(sample.clone())
        added = kwargs.get("added_cond_kwargs") or {}
        if "time_ids" in added:
            self.time_ids.append(added["time_ids"].clone())

    def restore(self):
        self.handle.remove()
        for obj, name, orig in reversed(self.patches):
            if orig is None:
                delattr(obj, name)  # the instance attribute hid the class's method
            else:
                setattr(obj, name, orig)


def expected_draw_order(c, in_channels, steps_run):
    """The README's rule for the order of draws from the request's generator."""
    ancestral = c["scheduler"] == EULER_A
    if c["pipeline"] in INPAINT_PIPELINES:
        order = []
        if in_channels == 4 or c["strength"] != 1.0:
            order.append("encode:image")
        order.append("noise")
        order.append("encode:masked_image")
    else:
        order = ["encode:image", "noise"]
    return order + ["step"] * (steps_run if ancestral else 0)


def run_case(c, classes):
    pipe = load_pipe(c["pipeline"], c["model"])
    pipe.scheduler = classes[c["scheduler"]].from_config(pipe.scheduler_base_config)
    inpaint = c["pipeline"] in INPAINT_PIPELINES
    in_channels = pipe.unet.config.in_channels
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    kwargs = {
        "prompt": c["prompt"],
        "negative_prompt": c["negative_prompt"],
        "image": load_input(c["init_image"]),
        "strength": c["strength"],
        "num_inference_steps": c["steps"],
        "guidance_scale": c["guidance"],
        "generator": torch.Generator("cpu").manual_seed(SEED),
        "output_type": "np",
        "callback_on_step_end": on_step,
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    if inpaint:
        kwargs["mask_image"] = load_input(c["mask"])
        kwargs["width"] = c["width"]
        kwargs["height"] = c["height"]
    cap = Capture(pipe, c["pipeline"])
    try:
        out = pipe(**kwargs)
    finally:
        cap.restore()

    cid = c["id"]
    sched = pipe.scheduler

    def fail(msg):
        raise RuntimeError(f"{cid}: {msg}")

    # Timesteps: the loop ran the schedule from t_start on (order 1 for all three schedulers).
    n = c["steps"]
    init_timestep = min(int(n * c["strength"]), n)
    t_start = max(n - init_timestep, 0)
    ran = sched.timesteps[t_start:]
    if len(after) != len(ran) or sched.order != 1:
        fail(f"{len(after)} step callbacks for {len(ran)} timesteps")
    begin_index = getattr(sched, "begin_index", None)
    if hasattr(sched, "set_begin_index") and begin_index != t_start:
        fail(f"begin_index {begin_index} != t_start {t_start}")

    # Preprocessing.
    kinds = [k for k, _ in cap.preprocessed]
    if kinds != (["image", "mask"] if inpaint else ["image"]):
        fail(f"preprocess calls {kinds}")
    image_in = cap.preprocessed[0][1].to(torch.float32)
    h, w = image_in.shape[-2:]
    want_image, mask_resized = expected_preprocess(c, (h, w))
    if not torch.equal(image_in, want_image):
        fail("image_in differs from Pillow RGB -> Lanczos resize -> /255 -> *2-1")
    src_w, src_h = PIL.Image.open(os.path.join(REPO, c["init_image"])).size
    if c["width"] is None and (w, h) != (src_w - src_w % 8, src_h - src_h % 8):
        fail(f"default size {w}x{h} is not the image's rounded down to a multiple of 8")
    if c["width"] is not None and (w, h) != (c["width"], c["height"]):
        fail(f"processed size {w}x{h} is not the requested one")
    lat_hw = (h // 8, w // 8)
    shape = (1, 4) + lat_hw
    tensors = {"image_in": image_in.contiguous()}
    entry_extra = {
        "processed_width": int(w),
        "processed_height": int(h),
        "image_resized": (src_w, src_h) != (w, h),
    }
    mask_in = None
    if inpaint:
        mask_in = cap.preprocessed[1][1]
        want_mask = (mask_resized >= 0.5).to(torch.float32)
        if not torch.equal(mask_in, want_mask):
            fail("mask_in differs from Pillow L -> Lanczos resize -> /255 -> (>= 0.5)")
        mask_w, mask_h = PIL.Image.open(os.path.join(REPO, c["mask"])).size
        entry_extra["mask_resized"] = (mask_w, mask_h) != (w, h)
        tensors["mask_in"] = mask_in.contiguous()
        if entry_extra["mask_resized"]:
            tensors["mask_resized"] = mask_resized.contiguous()
    if entry_extra["image_resized"]:
        pil = PIL.Image.open(os.path.join(REPO, c["init_image"])).convert("RGB").resize((w, h), PIL.Image.LANCZOS)
        tensors["image_resized_u8"] = torch.from_numpy(np.asarray(pil).copy())[None]

    # The draws, replayed by hand from a fresh generator in the documented order.
    encodes = list(cap.encodes)
    labels = []
    for source, _t in cap.draws:
        if source == "encode":
            x = encodes.pop(0)[0]
            labels.append("encode:image" if torch.equal(x, image_in) else "encode:masked_image")
        else:
            labels.append(source)
    want_order = expected_draw_order(c, in_channels, len(ran))
    if labels != want_order:
        fail(f"draw order {labels} != documented {want_order}")
    gen = torch.Generator("cpu").manual_seed(SEED)
    for (source, drawn), label in zip(cap.draws, labels):
        if drawn.shape != torch.Size(shape) or not torch.equal(drawn, torch.randn(shape, generator=gen)):
            fail(f"draw {label} is not the generator's next randn{list(shape)}")
    by_label = {}
    for (_s, drawn), label in zip(cap.draws, labels):
        by_label.setdefault(label, []).append(drawn)

    # Encoder: sample = mean + std * eps, scaled by the VAE's scaling_factor.
    sf = pipe.vae.config.scaling_factor
    image_latents = None
    for x, mean, std in cap.encodes:
        which = "image" if torch.equal(x, image_in) else "masked_image"
        eps = by_label[f"encode:{which}"][0]
        latents = sf * (mean + std * eps)
        tensors[f"{which}_encode_mean"] = f32(mean)
        tensors[f"{which}_encode_std"] = f32(std)
        tensors[f"{which}_encode_noise"] = f32(eps)
        if which == "image":
            image_latents = latents
            tensors["image_latents"] = f32(latents)
        else:
            want_masked = image_in * (mask_in < 0.5)
            if not torch.equal(x, want_masked):
                fail("masked image is not image_in * (mask_in < 0.5)")
            tensors["masked_image_latents"] = f32(latents)

    noise = by_label["noise"][0]
    tensors["noise"] = f32(noise)
    prepared = cap.prepared[0] if isinstance(cap.prepared, tuple) else cap.prepared
    initial = prepared
    # Noising: the first add_noise call is the initial one unless strength is 1 in inpainting.
    noise_calls = list(cap.add_noise)
    if inpaint and c["strength"] == 1.0:
        want_initial = noise * sched.init_noise_sigma
        if not torch.equal(initial, want_initial):
            fail("strength 1 initial latents are not noise * init_noise_sigma")
    else:
        t0, noised = noise_calls.pop(0)
        if not torch.equal(t0.to(torch.float64), ran[:1].to(torch.float64)) or not torch.equal(noised, initial):
            fail("initial latents are not add_noise(image_latents, noise, timesteps[t_start])")
        check_add_noise(sched, image_latents, noise, t_start, noised, fail)
    if inpaint:
        _lat, got_noise = cap.prepared[0], cap.prepared[1]
        if not torch.equal(got_noise, noise):
            fail("prepare_latents' noise is not the drawn noise")
    tensors["initial_latents"] = f32(initial)

    # Mask at latent size: nearest-neighbour interpolation, i.e. pixel (8i, 8j).
    if inpaint:
        mask_lat, masked_lat = cap.mask_prepared
        mask_lat, masked_lat = mask_lat[:1], masked_lat[:1]
        if not torch.equal(mask_lat, mask_in[:, :, ::8, ::8]):
            fail("mask_latent is not mask_in[:, :, ::8, ::8]")
        if not torch.equal(masked_lat, tensors["masked_image_latents"]):
            fail("masked_image_latents differ from the sampled encoder latents * scaling_factor")
        tensors["mask_latent"] = f32(mask_lat)
        if image_latents is not None and len(cap.prepared) == 3 and not torch.equal(cap.prepared[2], image_latents):
            fail("prepare_latents' image_latents differ from the sampled encoder latents * scaling_factor")

    # UNet input: 9 channels are [scaled latents (x2 under CFG), mask, masked-image latents].
    if in_channels == 9:
        for x in cap.unet_inputs:
            if not (torch.equal(x[:1, 4:5], mask_lat) and torch.equal(x[:1, 5:9], masked_lat)):
                fail("9-channel UNet input is not cat([latents, mask, masked_image_latents])")
    # 4-channel inpainting: after each step, known region = add_noise(image_latents, noise, next t),
    # the un-noised image_latents after the last step.
    if inpaint and in_channels == 4:
        known = []
        for i, stepped in enumerate(cap.steps):
            if i < len(ran) - 1:
                t_next, proper = noise_calls.pop(0)
                if not torch.equal(t_next.to(torch.float64), ran[i + 1 : i + 2].to(torch.float64)):
                    fail(f"blend {i} noised to {t_next}, not the next timestep")
            else:
                proper = image_latents
            blended = (1 - mask_lat) * proper + mask_lat * stepped
            if not torch.equal(blended, after[i]):
                fail(f"step {i}: latents are not (1 - mask) * known + mask * step output")
            known.append(f32(proper))
        tensors["latents_before_blend"] = torch.stack([f32(s) for s in cap.steps])
        tensors["blend_known"] = torch.stack(known)
    if noise_calls:
        fail(f"{len(noise_calls)} unexplained add_noise calls")
    if by_label.get("step"):
        tensors["step_noise"] = torch.stack([f32(s) for s in by_label["step"]])

    tensors["timesteps"] = ran.to(torch.float64)
    tensors["schedule_timesteps"] = sched.timesteps.to(torch.float64)
    if hasattr(sched, "sigmas"):
        tensors["sigmas"] = sched.sigmas.to(torch.float64)
    tensors["latents"] = torch.stack([f32(s) for s in after])
    image = torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32)
    tensors["image"] = image
    tensors["image_u8"] = torch.from_numpy((out.images * 255).round().astype("uint8"))

    entry = {
        "id": cid,
        "file": f"{cid}.safetensors",
        "pipeline": c["pipeline"],
        "model": c["model"],
        "unet_in_channels": in_channels,
        "prompt": c["prompt"],
        "negative_prompt": c["negative_prompt"],
        "seed": SEED,
        "steps": n,
        "guidance": c["guidance"],
        "strength": c["strength"],
        "width": c["width"],
        "height": c["height"],
        **entry_extra,
        "init_image": c["init_image"],
        "mask": c["mask"],
        "scheduler": c["scheduler"],
        "scheduler_options": {},
        "scheduler_config": json_safe(sched.config),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "t_start": t_start,
        "begin_index": begin_index,
        "steps_run": len(ran),
        "draw_order": labels,
    }
    if c["pipeline"] in XL_PIPELINES:
        ids = cap.time_ids[0]
        if any(not torch.equal(t, ids) for t in cap.time_ids):
            fail("time ids changed between steps")
        want = torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32)
        if not torch.equal(ids, want):
            fail(f"time ids {ids.tolist()} != {want.tolist()}")
        tensors["add_time_ids"] = f32(ids)
        entry["size_conditioning"] = {
            "original_size": [int(h), int(w)],
            "crops_coords_top_left": [0, 0],
            "target_size": [int(h), int(w)],
            "add_time_ids_rows": "[uncond, cond], both (h, w, 0, 0, h, w)",
        }
    return {k: v.contiguous() for k, v in tensors.items()}, entry


def check_add_noise(sched, original, noise, index, got, fail):
    """Recompute the noising with the scheduler's formula at the begin index."""
    from diffusers import DDIMScheduler

    if isinstance(sched, DDIMScheduler):
        t = int(sched.timesteps[index])
        a = sched.alphas_cumprod.to(torch.float32)[t]
        want = a**0.5 * original + (1 - a) ** 0.5 * noise
        if not torch.allclose(want, got, rtol=0, atol=1e-6):
            fail("DDIM add_noise is not sqrt(a) x0 + sqrt(1 - a) noise")
    else:
        sigma = sched.sigmas.to(torch.float32)[index]
        if not torch.equal(original + noise * sigma, got):
            fail("Euler add_noise is not x0 + noise * sigmas[begin_index]")


def probe_no_step(classes):
    """How each pipeline kind fails when int(steps * strength) == 0 (nothing would run)."""
    results = []
    for pipeline, model, strength in NO_STEP:
        pipe = load_pipe(pipeline, model)
        pipe.scheduler = classes[EULER].from_config(pipe.scheduler_base_config)
        kwargs = {
            "prompt": PLAIN,
            "image": load_input(INIT),
            "strength": strength,
            "num_inference_steps": 4,
            "generator": torch.Generator("cpu").manual_seed(SEED),
            "output_type": "np",
        }
        if pipeline in INPAINT_PIPELINES:
            kwargs.update(mask_image=load_input(MASK), width=64, height=96)
        try:
            pipe(**kwargs)
        except Exception as e:  # noqa: BLE001  (recording whatever diffusers raises)
            results.append({
                "pipeline": pipeline,
                "model": model,
                "steps": 4,
                "strength": strength,
                "raises": type(e).__name__,
                "message": " ".join(str(e).split())[:300],
            })
            continue
        raise RuntimeError(f"{pipeline} on {model} with strength {strength} ran without raising")
    return results


def main():
    import diffusers
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-img2img"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    classes = {name: getattr(diffusers, name) for name in SCHEDULER_CLASSES}
    os.makedirs(args.out, exist_ok=True)

    cases = []
    for c in CASES:
        tensors, entry = run_case(c, classes)
        save_file(tensors, os.path.join(args.out, entry["file"]), metadata={"case": entry["id"]})
        cases.append(entry)
        print(entry["id"], entry["draw_order"], flush=True)
    no_step = probe_no_step(classes)

    index = {
        "generator": "tools/make_goldens_img2img.py",
        "inputs": "tools/make_img2img_inputs.py -> tests/fixtures/img2img",
        "versions": versions(),
        "device": "cpu",
        "dtype": "float32",
        "loading": "image and mask are passed as diffusers.utils.load_image(path): EXIF transpose, convert('RGB')",
        "image_preprocess": "VaeImageProcessor: size = (width, height) if passed, else the image's own size rounded "
        "down to a multiple of 8; PIL resize to it with Image.LANCZOS (skipped by Pillow when the size is already "
        "equal); float32 u8/255; 2x - 1; NCHW",
        "mask_preprocess": "VaeImageProcessor(do_normalize=False, do_binarize=True, do_convert_grayscale=True): "
        "PIL resize (LANCZOS, done on the RGB image from load_image) then convert('L'); float32 u8/255; "
        "1 where >= 0.5 else 0; [1, 1, h, w]",
        "mask_latent": "torch.nn.functional.interpolate(mask_in, size=(h/8, w/8)) (mode 'nearest') = "
        "mask_in[:, :, ::8, ::8]; masked image = image_in * (mask_in < 0.5)",
        "timesteps": "init_timestep = min(int(steps * strength), steps); t_start = steps - init_timestep; the loop "
        "runs schedule_timesteps[t_start:]; set_begin_index(t_start) where the scheduler has it",
        "no_step": no_step,
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
