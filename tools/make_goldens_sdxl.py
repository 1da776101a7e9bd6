"""Record diffusers' reference outputs on weights/tiny-sdxl as golden files for sdgen's SDXL tests.

Runs the real `StableDiffusionXLPipeline` (CPU, fp32, one thread, deterministic) over a list of
cases: Euler (the model's own scheduler), DDIM and DPM++ 2M Karras, each with and without a
negative prompt (without one, `force_zeros_for_empty_prompt` gives zero negative conditioning);
an explicit empty negative prompt; clip skip; micro-conditioning (original size, crop, target
size, and their negative counterparts); Turbo-style sampling (Euler ancestral, "trailing"
spacing, 1 and 2 steps, no guidance); a truncated long prompt and a messy one. Per case it
stores the token ids of both tokenizers, the concatenated text embeddings and pooled
embeddings the pipeline used, the time ids fed to the UNet, the initial noise, timesteps,
sigmas, latents after every step and the final image. `components.safetensors` holds
per-model outputs. See tests/fixtures/goldens-sdxl/README.md.

    /work/refenv/bin/python tools/make_goldens_sdxl.py [OUT_DIR]   # default tests/fixtures/goldens-sdxl
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import PROMPTS, f32, versions  # noqa: E402
from make_scheduler_pipeline_goldens import json_safe  # noqa: E402  (-inf as null, sorted defaults)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "weights", "tiny-sdxl")

SEED = 0
STEPS = 4
GUIDANCE = 5.0
PLAIN = PROMPTS["plain"][0]
POSITIVE, NEGATIVE = PROMPTS["negative"]
WIDE = (64, 96)  # (width, height): non-square, so a swapped height/width shows
SQUARE = (64, 64)

# Distinct numbers everywhere, so swapped pairs or a negative/positive mix-up cannot pass.
# Sizes are (height, width), as diffusers takes them.
MICRO = {"original_size": (128, 96), "crops_coords_top_left": (8, 4), "target_size": (96, 64)}
NEGATIVE_MICRO = {
    "negative_original_size": (40, 24),
    "negative_crops_coords_top_left": (2, 6),
    "negative_target_size": (80, 56),
}
TURBO = {"timestep_spacing": "trailing"}
KARRAS = {"use_karras_sigmas": True}


def case(cid, scheduler, prompt=PLAIN, negative=None, size=WIDE, steps=STEPS, guidance=GUIDANCE, options=None,
         clip_skip=None, micro=None):
    return {
        "id": cid,
        "scheduler": scheduler,
        "options": options or {},
        "prompt": prompt,
        "negative_prompt": negative,
        "width": size[0],
        "height": size[1],
        "steps": steps,
        "guidance": guidance,
        "clip_skip": clip_skip,
        "micro": micro or {},
    }


CASES = [
    case("euler_neg_64x96", "EulerDiscreteScheduler", POSITIVE, NEGATIVE),
    case("euler_64x96", "EulerDiscreteScheduler"),
    case("ddim_neg_64x96", "DDIMScheduler", POSITIVE, NEGATIVE),
    case("ddim_64x96", "DDIMScheduler"),
    case("dpmpp2m_karras_neg_64x96", "DPMSolverMultistepScheduler", POSITIVE, NEGATIVE, options=KARRAS),
    case("dpmpp2m_karras_64x96", "DPMSolverMultistepScheduler", options=KARRAS),
    case("euler_64x64", "EulerDiscreteScheduler", size=SQUARE),
    case("euler_empty_negative_64x96", "EulerDiscreteScheduler", negative=""),
    case("euler_clip_skip1_neg_64x96", "EulerDiscreteScheduler", POSITIVE, NEGATIVE, clip_skip=1),
    case("euler_micro_64x96", "EulerDiscreteScheduler", micro=MICRO),
    case("euler_micro_negmicro_neg_64x96", "EulerDiscreteScheduler", POSITIVE, NEGATIVE,
         micro=dict(MICRO, **NEGATIVE_MICRO)),
    case("turbo_1step_64x96", "EulerAncestralDiscreteScheduler", steps=1, guidance=0.0, options=TURBO),
    case("turbo_2step_64x96", "EulerAncestralDiscreteScheduler", steps=2, guidance=0.0, options=TURBO),
    case("euler_long_64x96", "EulerDiscreteScheduler", PROMPTS["long"][0]),
    case("euler_messy_64x96", "EulerDiscreteScheduler", PROMPTS["messy"][0]),
]

CLIP_SKIP_DOC = (
    "diffusers SDXL convention: both encoders are run with output_hidden_states=True (hidden_states has "
    "num_hidden_layers+1 entries, index 0 = embeddings, no final layer norm on any). clip_skip=None takes "
    "hidden_states[-2] (penultimate layer) of each; clip_skip=k takes hidden_states[-(k+2)] of each, still "
    "without final_layer_norm. The negative prompt always uses hidden_states[-2], whatever clip_skip is. "
    "The pooled embedding is text_encoder_2's text_embeds (text_projection(final_layer_norm(last layer)) at the "
    "first end token), unaffected by clip_skip. The script checks all of this against the pipeline's own values."
)

SCHEDULER_CLASSES = (
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
)


def load_pipe(model=MODEL):
    """The tiny SDXL pipeline on CPU, fp32, one thread, deterministic, quiet."""
    import diffusers
    import transformers
    from diffusers import StableDiffusionXLPipeline

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    pipe = StableDiffusionXLPipeline.from_pretrained(
        model, torch_dtype=torch.float32, local_files_only=True, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_base_config = pipe.scheduler.config
    return pipe


def check_embeds(pipe, c, ids, embeds, pooled, negative):
    """Recompute the pipeline's conditioning from the captured ids, to pin down the convention."""
    skip = c["clip_skip"]
    with torch.no_grad():
        o1 = pipe.text_encoder(ids[0], output_hidden_states=True)
        o2 = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    index = -2 if negative or skip is None else -(skip + 2)
    mine = torch.cat([o1.hidden_states[index], o2.hidden_states[index]], dim=-1)
    if not torch.equal(mine, embeds):
        raise RuntimeError(f"{c['id']}: embeds are not cat(hidden_states[{index}]) of both encoders")
    if not torch.equal(o2.text_embeds, pooled):
        raise RuntimeError(f"{c['id']}: pooled is not text_encoder_2's text_embeds")


def run_case(pipe, c, classes):
    """Run one pipeline call and capture everything the Rust side compares against."""
    pipe.scheduler = classes[c["scheduler"]].from_config(pipe.scheduler_base_config, **c["options"])
    cfg = c["guidance"] > 1.0
    enc_calls = {"te1": [], "te2": []}

    def id_hook(name):
        def hook(_module, args, kwargs, _output):
            ids = kwargs.get("input_ids", args[0] if args else None)
            enc_calls[name].append(ids.clone())

        return hook

    handles = [
        pipe.text_encoder.register_forward_hook(id_hook("te1"), with_kwargs=True),
        pipe.text_encoder_2.register_forward_hook(id_hook("te2"), with_kwargs=True),
    ]
    unet_calls = []

    def unet_hook(_module, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        unet_calls.append(
            (kwargs["encoder_hidden_states"].clone(), added["text_embeds"].clone(), added["time_ids"].clone())
        )

    handles.append(pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True))

    encoded = {}
    orig_encode = pipe.encode_prompt

    def encode(*args, **kwargs):
        out = orig_encode(*args, **kwargs)
        encoded["out"] = [None if t is None else t.detach().clone() for t in out]
        return out

    drawn = {}
    orig_prepare = pipe.prepare_latents

    def prepare(*args, **kwargs):
        out = orig_prepare(*args, **kwargs)
        drawn["latents"] = out.clone()
        return out

    # Euler ancestral draws fresh noise from the pipeline's generator in every step.
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral

    step_noise = []
    orig_randn = ancestral.randn_tensor

    def randn(*args, **kwargs):
        out = orig_randn(*args, **kwargs)
        step_noise.append(out.clone())
        return out

    pipe.encode_prompt = encode
    pipe.prepare_latents = prepare
    ancestral.randn_tensor = randn
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    try:
        out = pipe(
            c["prompt"],
            negative_prompt=c["negative_prompt"],
            num_inference_steps=c["steps"],
            guidance_scale=c["guidance"],
            width=c["width"],
            height=c["height"],
            clip_skip=c["clip_skip"],
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
            **c["micro"],
        )
    finally:
        for h in handles:
            h.remove()
        pipe.encode_prompt = orig_encode
        pipe.prepare_latents = orig_prepare
        ancestral.randn_tensor = orig_randn

    cid = c["id"]
    cond_embeds, uncond_embeds, cond_pooled, uncond_pooled = encoded["out"]
    zeros = cfg and c["negative_prompt"] is None
    n_enc = 2 if cfg and not zeros else 1
    if len(enc_calls["te1"]) != n_enc or len(enc_calls["te2"]) != n_enc:
        raise RuntimeError(f"{cid}: expected {n_enc} calls per text encoder, got {enc_calls}")
    check_embeds(pipe, c, [enc_calls["te1"][0], enc_calls["te2"][0]], cond_embeds, cond_pooled, False)
    if n_enc == 2:
        check_embeds(pipe, c, [enc_calls["te1"][1], enc_calls["te2"][1]], uncond_embeds, uncond_pooled, True)
    if zeros and (uncond_embeds.abs().max() != 0 or uncond_pooled.abs().max() != 0):
        raise RuntimeError(f"{cid}: force_zeros_for_empty_prompt should give zero negative conditioning")
    if not cfg and uncond_embeds is not None:
        raise RuntimeError(f"{cid}: no guidance, yet negative embeddings were made")

    # What the UNet saw: the same conditioning in every step, uncond half first under guidance.
    ehs, text_embeds, time_ids = unet_calls[0]
    for later in unet_calls[1:]:
        if not all(torch.equal(a, b) for a, b in zip(later, unet_calls[0])):
            raise RuntimeError(f"{cid}: UNet conditioning changed between steps")
    want_ehs = torch.cat([uncond_embeds, cond_embeds]) if cfg else cond_embeds
    want_pooled = torch.cat([uncond_pooled, cond_pooled]) if cfg else cond_pooled
    if not torch.equal(ehs, want_ehs) or not torch.equal(text_embeds, want_pooled):
        raise RuntimeError(f"{cid}: the UNet's conditioning is not [uncond, cond] of encode_prompt")
    h, w = c["height"], c["width"]
    micro = c["micro"]
    ids = list(micro.get("original_size", (h, w)) + micro.get("crops_coords_top_left", (0, 0))
               + micro.get("target_size", (h, w)))
    neg = list(micro["negative_original_size"] + micro["negative_crops_coords_top_left"]
               + micro["negative_target_size"]) if "negative_original_size" in micro else ids
    want_ids = torch.tensor([neg, ids] if cfg else [ids], dtype=torch.float32)
    if not torch.equal(time_ids, want_ids):
        raise RuntimeError(f"{cid}: time_ids {time_ids.tolist()} != {want_ids.tolist()}")

    shape = (1, 4, h // 8, w // 8)
    gen = torch.Generator("cpu").manual_seed(SEED)
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if not torch.equal(drawn["latents"], noise * pipe.scheduler.init_noise_sigma):
        raise RuntimeError(f"{cid}: initial latents differ from manual_seed(seed) randn * init_noise_sigma")
    if len(after) != len(pipe.scheduler.timesteps):
        raise RuntimeError(f"{cid}: expected {len(pipe.scheduler.timesteps)} step callbacks, got {len(after)}")
    # The ancestral noise continues the same generator, one draw of the latent's shape per step.
    for i, drawn_noise in enumerate(step_noise):
        if not torch.equal(drawn_noise, torch.randn(shape, generator=gen, dtype=torch.float32)):
            raise RuntimeError(f"{cid}: step {i}'s ancestral noise is not the generator's next randn")

    image = torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32)
    image_u8 = torch.from_numpy((out.images * 255).round().astype("uint8"))
    tensors = {
        "cond_ids": enc_calls["te1"][0].to(torch.int64),
        "cond_ids_2": enc_calls["te2"][0].to(torch.int64),
        "cond_embeds": f32(cond_embeds),
        "cond_pooled": f32(cond_pooled),
        "add_time_ids": f32(time_ids),
        "noise": noise,
        "timesteps": pipe.scheduler.timesteps.to(torch.float64),
        "latents": torch.stack([f32(s) for s in after]),
        "image": image,
        "image_u8": image_u8,
    }
    if cfg:
        tensors["uncond_embeds"] = f32(uncond_embeds)
        tensors["uncond_pooled"] = f32(uncond_pooled)
    if n_enc == 2:
        tensors["uncond_ids"] = enc_calls["te1"][1].to(torch.int64)
        tensors["uncond_ids_2"] = enc_calls["te2"][1].to(torch.int64)
    if hasattr(pipe.scheduler, "sigmas"):
        tensors["sigmas"] = pipe.scheduler.sigmas.to(torch.float64)
    if step_noise:
        tensors["step_noise"] = torch.stack([f32(n) for n in step_noise])
    entry = {
        "id": cid,
        "file": f"{cid}.safetensors",
        "prompt": c["prompt"],
        "negative_prompt": c["negative_prompt"],
        "seed": SEED,
        "width": w,
        "height": h,
        "scheduler": c["scheduler"],
        "scheduler_options": c["options"],
        "scheduler_config": json_safe(pipe.scheduler.config),
        "init_noise_sigma": float(pipe.scheduler.init_noise_sigma),
        "steps": c["steps"],
        "guidance": c["guidance"],
        "classifier_free_guidance": cfg,
        "clip_skip": c["clip_skip"],
    }
    for key in ("original_size", "crops_coords_top_left", "target_size", *NEGATIVE_MICRO):
        entry[key] = list(micro[key]) if key in micro else None
    return {k: v.contiguous() for k, v in tensors.items()}, entry


def components(pipe, prompts=(PLAIN, PROMPTS["messy"][0])):
    """Per-model goldens: both text encoders, the UNet with added conditioning, the VAE decoder."""
    t = {}
    prompts = list(prompts)
    with torch.no_grad():
        encoders = (("te1", pipe.tokenizer, pipe.text_encoder), ("te2", pipe.tokenizer_2, pipe.text_encoder_2))
        for name, tok, te in encoders:
            ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            out = te(ids, output_hidden_states=True)
            t[f"{name}.input_ids"] = ids.to(torch.int64)
            t[f"{name}.hidden_states"] = torch.stack([f32(h) for h in out.hidden_states])
        t["te2.last_hidden_state"] = f32(out.last_hidden_state)
        t["te2.text_embeds"] = f32(out.text_embeds)

        g = torch.Generator("cpu").manual_seed(1234)
        width = pipe.unet.config.cross_attention_dim
        proj = pipe.text_encoder_2.config.projection_dim
        sample = torch.randn(2, 4, 8, 12, generator=g)
        ehs = torch.randn(2, 77, width, generator=g)
        text_embeds = torch.randn(2, proj, generator=g)
        # (original h, w, crop top, left, target h, w) for a 64x96 (h x w) image, and a cropped one.
        time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0], [128.0, 160.0, 8.0, 16.0, 64.0, 96.0]])
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        t["unet.sample"] = sample
        t["unet.encoder_hidden_states"] = ehs
        t["unet.text_embeds"] = text_embeds
        t["unet.time_ids"] = time_ids
        t_int = torch.tensor(981, dtype=torch.int64)
        t_float = torch.tensor(665.3333, dtype=torch.float32)
        t["unet.t_int"] = t_int.reshape(1)
        t["unet.t_float"] = t_float.reshape(1)
        t["unet.out_t_int"] = f32(pipe.unet(sample, t_int, encoder_hidden_states=ehs, added_cond_kwargs=added).sample)
        t["unet.out_t_float"] = f32(
            pipe.unet(sample, t_float, encoder_hidden_states=ehs, added_cond_kwargs=added).sample
        )

        vae = pipe.vae
        z = torch.randn(1, 4, 12, 8, generator=g) / vae.config.scaling_factor
        t["vae.decode_in"] = z
        t["vae.decode_out"] = f32(vae.decode(z).sample)
    return {k: v.contiguous() for k, v in t.items()}


def main():
    import diffusers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-sdxl"))
    args = ap.parse_args()
    pipe = load_pipe()
    classes = {name: getattr(diffusers, name) for name in SCHEDULER_CLASSES}
    os.makedirs(args.out, exist_ok=True)

    cases = []
    for c in CASES:
        tensors, entry = run_case(pipe, c, classes)
        save_file(tensors, os.path.join(args.out, entry["file"]), metadata={"case": entry["id"]})
        cases.append(entry)
        print(entry["id"], flush=True)

    save_file(components(pipe), os.path.join(args.out, "components.safetensors"), metadata={"model": "tiny-sdxl"})
    index = {
        "model": "weights/tiny-sdxl",
        "generator": "tools/make_goldens_sdxl.py",
        "versions": versions(),
        "device": "cpu",
        "dtype": "float32",
        "pipeline": "StableDiffusionXLPipeline (force_zeros_for_empty_prompt true, no watermarker)",
        "tokenizers": "tokenizer pads with <|endoftext|> (49407), tokenizer_2 with '!' (0); both slow CLIPTokenizer "
        "without ftfy, max_length 77, truncation keeps BOS + 75 tokens + EOS (see ../goldens/README.md)",
        "clip_skip_convention": CLIP_SKIP_DOC,
        "negative_conditioning": "guidance > 1 and negative_prompt null: uncond_embeds and uncond_pooled are zeros "
        "(force_zeros_for_empty_prompt), no text encoder runs for them and no uncond_ids* are stored; "
        "negative_prompt '' is encoded like any prompt. guidance <= 1: no uncond tensors at all",
        "time_ids": "add_time_ids = original_size (h, w) + crops_coords_top_left (top, left) + target_size (h, w), "
        "defaults (height, width), (0, 0), (height, width); the uncond row uses the negative_* values only when "
        "negative_original_size and negative_target_size are both given (negative crop default (0, 0)), else "
        "the positive row. Under guidance the UNet gets [uncond, cond] rows, as for the embeddings",
        "noise": "torch.Generator('cpu').manual_seed(seed); torch.randn([1,4,h/8,w/8], float32); "
        "the pipeline's initial latents are noise * init_noise_sigma (checked)",
        "step_noise": "Euler ancestral only: the same generator's next randn([1,4,h/8,w/8]) in every step (checked)",
        "latents": "latents[i] = scheduler output after step i (callback_on_step_end), shape [steps,1,4,h/8,w/8]",
        "image": "output_type='np': (decode(latents/0.13025)/2+0.5).clamp(0,1), NHWC float32; "
        "image_u8 = (image*255).round() as uint8",
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases and components.safetensors to {args.out}")


if __name__ == "__main__":
    main()
