"""Draw the small PNG inputs of sdgen's img2img and inpainting tests (tests/fixtures/img2img).

Everything is computed from integer geometry with numpy (no randomness, no fonts), so the
pictures are the same on every machine; the PNGs carry no text chunks or timestamps, so the
files are byte-for-byte reproducible with the same Pillow/zlib. The images have structure
(gradients, sharp-edged shapes, a thin diagonal) rather than noise, so that a wrong resize
filter or a swapped axis shows. See tests/fixtures/img2img/README.md.

    /work/refenv/bin/python tools/make_img2img_inputs.py [OUT_DIR]   # default tests/fixtures/img2img
"""

import argparse
import os

import numpy as np
import PIL.Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Soft edge of the 64x96 mask by Chebyshev distance (pixels) outside its white rectangle.
# 128/255 >= 0.5 and 127/255 < 0.5: binarizing at 0.5 grows the rectangle by exactly 2 pixels.
MASK_RAMP = {1: 191, 2: 128, 3: 127, 4: 64}
MASK_RECT = (13, 27, 45, 69)  # x0, y0, x1, y1 (end exclusive); edges off the 8-pixel grid


def init_image(width, height):
    """RGB: red ramp left to right, green ramp top to bottom, a disc, a box and a dark diagonal."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.zeros((height, width, 3), dtype=np.float64)
    rgb[..., 0] = np.floor(x * 255 / (width - 1))
    rgb[..., 1] = np.floor(y * 255 / (height - 1))
    rgb[..., 2] = 96
    cx, cy, r = width * 5 // 16, height * 5 // 16, min(width, height) * 3 // 16
    rgb[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = (240, 220, 40)
    box = (x >= width * 17 // 32) & (x < width * 29 // 32) & (y >= height * 7 // 12) & (y < height * 7 // 8)
    rgb[box] = (30, 60, 200)
    rgb[np.abs(5 * x - 3 * y - 25) < 6] = (20, 20, 20)
    return PIL.Image.fromarray(rgb.astype(np.uint8))


def rect_mask(width, height, rect, ramp):
    """L: white rectangle on black, with a grey ramp outside it (Chebyshev distance)."""
    y, x = np.mgrid[0:height, 0:width]
    x0, y0, x1, y1 = rect
    dx = np.maximum(np.maximum(x0 - x, x - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - y, y - (y1 - 1)), 0)
    d = np.maximum(dx, dy)
    m = np.zeros((height, width), dtype=np.uint8)
    m[d == 0] = 255
    for dist, value in ramp.items():
        m[d == dist] = value
    return PIL.Image.fromarray(m)


def disc_mask(size):
    """L, square: a hard-edged white disc off centre; its aspect differs from 64x96.

    Placed so that after diffusers' Lanczos resize to 64x96 no pixel lies within 12 levels of
    the 0.5 threshold (checked in main): a resizer that differs from Pillow's by a few levels
    still binarizes to the same mask.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    m = np.zeros((size, size), dtype=np.uint8)
    m[(x - size * 0.55) ** 2 + (y - size * 0.425) ** 2 <= (size * 0.25) ** 2] = 255
    return PIL.Image.fromarray(m)


def threshold_margin(mask, width, height):
    """Smallest distance, in levels, of the Lanczos-resized mask from the 127.5 threshold."""
    resized = np.asarray(mask.resize((width, height), resample=PIL.Image.LANCZOS)).astype(np.float64)
    return float(np.abs(resized - 127.5).min())


FILES = {
    "init_64x96.png": lambda: init_image(64, 96),
    "init_72x100.png": lambda: init_image(72, 100),
    "mask_64x96.png": lambda: rect_mask(64, 96, MASK_RECT, MASK_RAMP),
    "mask_40x40.png": lambda: disc_mask(40),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "img2img"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, make in FILES.items():
        img = make()
        path = os.path.join(args.out, name)
        img.save(path, format="PNG", optimize=False, compress_level=9)
        back = PIL.Image.open(path)
        if back.mode != img.mode or not np.array_equal(np.asarray(back), np.asarray(img)):
            raise SystemExit(f"{path}: does not read back as written")
        print(f"wrote {path} ({img.mode} {img.width}x{img.height})")
    binary = np.asarray(FILES["mask_64x96.png"]()) >= 128
    x0, y0, x1, y1 = MASK_RECT
    grown = np.zeros_like(binary)
    grown[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = True
    if not np.array_equal(binary, grown):
        raise SystemExit("mask_64x96.png binarized at 0.5 is not its rectangle grown by 2 pixels")
    margin = threshold_margin(FILES["mask_40x40.png"](), 64, 96)
    if margin < 12:
        raise SystemExit(f"mask_40x40.png resized to 64x96 comes within {margin} levels of the threshold")


if __name__ == "__main__":
    main()
