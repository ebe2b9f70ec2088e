"""MedMNIST-C corruptions (Di Salvo et al., "MedMNIST-C", MICCAI workshops 2024, arXiv 2406.17536), written here.

The paper's code (github.com/francescodisalvo05/medmnistc-api, Apache-2.0, ``medmnistc/corruptions/``) defines each
corruption and, in ``registry.py``, the set per dataset with 5 severity parameters each. Its package cannot be used
here: it needs torchvision (which breaks this CPU torch) and ImageMagick, and it is written for 224 px images (three
of its corruptions raise at 28 px). This module follows its definitions and its registry values, with three changes:

- **Image size.** The registry's values are for 224 px. Intensity parameters (noise amplitude, brightness, contrast,
  gamma, JPEG quality, pixelation factor) do not depend on the size and are kept. Spatial extents (blur sigma and
  radius, motion length, bubble and stain radius, text height) are in pixels at 224 px and are multiplied by
  ``size / 224``: a MedMNIST image at 28 px is the 224 px image shrunk 8x, so this is the same physical corruption
  seen at the lower resolution. At 28 px the blurs therefore become mild (a 224 px Gaussian kernel of 3..13 px has a
  sigma of 0.8..2.3 px, i.e. 0.1..0.3 px at 28 px); that is what the corruption is at that size, not a bug.
- **Determinism.** Every random draw comes from a numpy Generator seeded by (seed, corruption, severity), so the
  same call gives the same images; albumentations transforms get their own seed.
- **Batches.** Pixel-wise corruptions are numpy expressions over the whole batch; blurs run OpenCV on the batch
  stacked along the channel axis; the rest call OpenCV or albumentations once per image (never per pixel).

``stain_deposit`` draws soft dark blots instead of the paper's ink masks (``inks.npz``, not redistributed here),
``motion_blur`` uses a one-sided Gaussian line kernel (ImageMagick's definition) instead of ImageMagick itself.

The per-dataset registry (data) is in corruption_sets.py.
"""

from __future__ import annotations

import difflib
import os
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from medmnist_pipeline.transforms.corruption_sets import FAMILIES, REFERENCE_SIZE, REGISTRY, RGB_ONLY, SEVERITIES  # noqa: F401 - one address for the registry


def _ordered(names: list[str]) -> list[str]:
    order = [name for family in FAMILIES.values() for name in family]
    return sorted(names, key=order.index)


def corruption_set(flag: str) -> list[str]:
    """The dataset's MedMNIST-C corruption names in family order; [] for a flag the paper has no set for."""
    return _ordered(list(REGISTRY.get(flag, {})))


def known_corruptions() -> list[str]:
    return _ordered([name for family in FAMILIES.values() for name in family])


def severity_param(flag: str, name: str, severity: int) -> Any:
    """The registry's value for ``severity`` (1-5). A dataset without ``name`` in its set (e.g. ``custom``) takes the
    value of the first registry dataset that has it, in the registry's order."""
    table = REGISTRY.get(flag, {}).get(name) or next(t[name] for t in REGISTRY.values() if name in t)
    return table[severity - 1]


def check_corruptions(key: str, names: list[str], severities: list[int], flag: str, channels: int | None) -> str | None:
    """Why a params list of corruptions and severities cannot run on this dataset, naming the key; None if it can.

    Names outside the dataset's MedMNIST-C set are allowed (their values come from another dataset's registry);
    only unknown names, severities outside 1-5, repeats and colour corruptions on greyscale images are errors
    (``channels`` None: not known yet, e.g. custom data; ``corrupt`` then refuses at run time).
    """
    known = known_corruptions()
    for i, name in enumerate(names):
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=2)
            hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(known)}"
            return f"{key}.corruptions[{i}]: unknown corruption {name!r}; {hint}"
        if name in RGB_ONLY and channels not in (None, 3):
            return (
                f"{key}.corruptions[{i}]: {name} changes colour and cannot apply to {flag}'s {channels}-channel images"
            )
        if name in names[:i]:
            return f"{key}.corruptions[{i}]: {name} is listed twice"
    for i, severity in enumerate(severities):
        if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
            return f"{key}.severities[{i}]: severity must be an integer from 1 to 5, got {severity!r}"
        if severity in severities[:i]:
            return f"{key}.severities[{i}]: severity {severity} is listed twice"
    if names and not severities:
        return f"{key}.severities: empty while corruptions are listed (give e.g. [1, 2, 3, 4, 5])"
    return None


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """Independent reproducible stream per (seed, corruption, severity); the name's CRC keeps it stable across runs."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity]).generate_state(1)[0])


# ---- the corruptions: (images float in [0, 1] or uint8, parameter, scale = size / 224, rng) -> images ----------------


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    # the paper truncates (astype after * 255); rounding would shift every image by half a grey level less
    return (np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)


def _stacked(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Run a per-channel OpenCV filter on the batch stacked along the channel axis (OpenCV 5 takes up to 128)."""
    n, h, w = images.shape[:3]
    flat = np.moveaxis(images.reshape(n, h, w, -1), 0, 2).reshape(h, w, -1)  # (H, W, N*C)
    parts = [fn(np.ascontiguousarray(flat[:, :, i : i + 128])) for i in range(0, flat.shape[2], 128)]
    out = np.concatenate([p.reshape(h, w, -1) for p in parts], axis=2)
    return np.moveaxis(out.reshape(h, w, n, -1), 2, 0).reshape(images.shape)


def _gaussian_noise(x, c, scale, rng):
    return _to_uint8(_unit(x) + rng.normal(0, c, x.shape).astype(np.float32))


def _speckle_noise(x, c, scale, rng):
    u = _unit(x)
    return _to_uint8(u + u * rng.normal(0, c, x.shape).astype(np.float32))


def _impulse_noise(x, c, scale, rng):  # skimage's s&p: a fraction c of the values set to 0 or 1, half each
    u = _unit(x)
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return _to_uint8(np.where(hit, salt.astype(np.float32), u))


def _shot_noise(x, mult, scale, rng):
    return _to_uint8(rng.poisson(_unit(x) * mult) / mult)


def _brightness(x, factor, scale, rng):
    # PIL ImageEnhance.Brightness: a blend with black, truncated; on grey levels directly (x / 255 * 255 in float32
    # would turn 130 into 129.99 and then 129)
    return np.clip(x * float(factor), 0, 255).astype(np.uint8)


def _contrast(x, factor, scale, rng):
    """PIL ImageEnhance.Contrast: blend with the image's mean grey level (luma for RGB, rounded to an integer)."""
    f = x.astype(np.float32)
    luma = f @ np.array([0.299, 0.587, 0.114], np.float32) if x.ndim == 4 else f
    mean = np.floor(luma.reshape(len(x), -1).mean(axis=1) + 0.5).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.clip(mean + factor * (f - mean), 0, 255).astype(np.uint8)


def _gamma(x, gamma, scale, rng):  # torchvision adjust_gamma with gain 1
    return _to_uint8(_unit(x) ** gamma)


def _gaussian_blur(x, kernel, scale, rng):
    sigma = (0.3 * ((kernel - 1) * 0.5 - 1) + 0.8) * scale  # torchvision's sigma for this kernel size, rescaled
    return _stacked(x, lambda a: cv2.GaussianBlur(a, (0, 0), sigmaX=sigma).reshape(a.shape))


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The paper's anti-aliased disk kernel, drawn with 8x8 sub-pixel samples so that a radius below a pixel gives
    a proper near-delta kernel instead of nothing or a whole 3x3 box."""
    half = int(np.ceil(radius)) + 1
    coords = (np.arange(-half, half + 1)[:, None] + (np.arange(8) + 0.5)[None, :] / 8 - 0.5).ravel()
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2).astype(np.float32)
    kernel = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).sum(axis=(1, 3))
    if not kernel.any():
        kernel[half, half] = 1.0
    if alias_blur > 0.01:
        kernel = cv2.GaussianBlur(kernel, (0, 0), alias_blur)
    return kernel / kernel.sum()


def _defocus_blur(x, radius_alias, scale, rng):
    kernel = _disk(radius_alias[0] * scale, radius_alias[1] * scale)
    return _stacked(x, lambda a: cv2.filter2D(a, -1, kernel, borderType=cv2.BORDER_REFLECT).reshape(a.shape))


def _motion_kernel(radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick's motion blur: a one-sided Gaussian (``sigma`` px) along a line of ``radius`` px at ``angle``,
    sampled 16 times per pixel of length."""
    half = max(int(np.ceil(radius)), 1)
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    t = np.linspace(0, radius, 16 * half + 1)
    weights = np.exp(-(t**2) / (2 * max(sigma, 1e-3) ** 2))
    cols = half + t * np.cos(np.deg2rad(angle_deg))
    rows = half - t * np.sin(np.deg2rad(angle_deg))
    np.add.at(kernel, (np.rint(rows).astype(int), np.rint(cols).astype(int)), weights)
    return kernel / kernel.sum()


def _motion_blur(x, radius_sigma, scale, rng):
    radius, sigma = radius_sigma[0] * scale, radius_sigma[1] * scale
    angles = rng.uniform(-45, 45, len(x))
    kernels = [_motion_kernel(radius, sigma, a) for a in angles]
    return np.stack([cv2.filter2D(img, -1, k) for img, k in zip(x, kernels, strict=True)])


def _alb() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network on import
    import albumentations

    return albumentations


def _albumentations(transform: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One albumentations transform over the batch, image by image, seeded from ``rng``."""
    pipeline = _alb().Compose([transform], seed=int(rng.integers(2**31)))
    return np.stack([pipeline(image=img)["image"] for img in x])


def _pixelate(x, factor, scale, rng):
    # The paper's PIL BOX resampling down and up. OpenCV's INTER_AREA is the same box filter downwards and nearest
    # neighbour for integer up-scaling, but blends at non-integer ratios (28 -> 22 -> 28), where nearest neighbour
    # would shift whole pixel columns and make severity 1 look worse than severity 4.
    alb = _alb()
    pair = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_AREA}
    return _albumentations(alb.Downscale(scale_range=(factor, factor), interpolation_pair=pair, p=1), x, rng)


def _jpeg(x, quality, scale, rng):
    return _albumentations(_alb().ImageCompression(quality_range=(quality, quality), p=1), x, rng)


def _zoom_blur(x, max_step, scale, rng):
    alb = _alb()  # zoom factors are relative to the image: no rescaling

    top, step = max_step
    return _albumentations(alb.ZoomBlur(max_factor=(top, top), step_factor=(step, step), p=1), x, rng)


def _saturate(x, c, scale, rng):
    def one(img: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(_unit(img), cv2.COLOR_RGB2HSV)
        hsv[..., 1] = np.clip(hsv[..., 1] + c, 0, 1)
        return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))

    return np.stack([one(img) for img in x])


def _black_corner(x, multiplier, scale, rng):
    h, w = x.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    radius = min(h, w) // 2 * multiplier
    outside = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 > radius**2
    return np.where(outside.reshape((1, h, w) + (1,) * (x.ndim - 3)), 0, x).astype(np.uint8)


def _stain_deposit(x, max_marks, scale, rng):
    """1..max_marks soft dark blots per image (the paper pastes ink masks of about 20-60 px at 224 px)."""
    out = x.astype(np.float32)
    h, w = x.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(len(x)):
        for _ in range(int(rng.integers(1, max_marks + 1))):
            radius = max(rng.uniform(10, 30) * scale, 1.0)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ink = np.exp(-((((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)) ** 2))  # flat top, soft edge
            out[i] *= (1 - 0.9 * ink)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _bubble(x, radius_count, scale, rng):
    """7..count translucent white disks with a brighter rim, radius 3..max px at 224 px (the paper's Bubble)."""
    max_radius, max_bubbles = radius_count
    out = x.astype(np.float32)
    h, w = x.shape[1:3]
    for i in range(len(x)):
        layer = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(7, max(max_bubbles, 7) + 1))):
            radius = max(rng.uniform(3, max_radius) * scale, 1.0)
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            rim = max(int(round(2 * scale)), 1)
            cv2.circle(layer, center, int(round(radius)) + rim, 130 / 255, -1)
            cv2.circle(layer, center, int(round(radius)), 100 / 255, -1)
        alpha = layer.reshape(h, w, *([1] * (x.ndim - 3)))
        out[i] = out[i] * (1 - alpha) + 255 * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def _characters(x, words_letters_font, scale, rng):
    """1..words random lower-case words in random colours (the paper's Characters), font scaled to the image."""
    max_words, max_letters, max_font = words_letters_font
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = x.copy()
    h, w = x.shape[1:3]
    for i in range(len(x)):
        img = np.ascontiguousarray(out[i])
        for _ in range(int(rng.integers(1, max_words + 1))):
            text = "".join(rng.choice(letters, int(rng.integers(3, max_letters + 1))))
            font = rng.uniform(0.14, max_font) * max(scale, 0.25)
            org = (int(rng.integers(0, max(w // 2, 1))), int(rng.integers(h // 4, h)))
            color = tuple(int(v) for v in rng.integers(0, 256, 3)) if x.ndim == 4 else int(rng.integers(0, 256))
            cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, font, color, 1, cv2.LINE_AA)
        out[i] = img
    return out


_APPLY: dict[str, Callable[[np.ndarray, Any, float, np.random.Generator], np.ndarray]] = {
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "gaussian_noise": _gaussian_noise,
    "speckle_noise": _speckle_noise,
    "impulse_noise": _impulse_noise,
    "shot_noise": _shot_noise,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "gaussian_blur": _gaussian_blur,
    "brightness_up": _brightness,
    "brightness_down": _brightness,
    "contrast_up": _contrast,
    "contrast_down": _contrast,
    "saturate": _saturate,
    "stain_deposit": _stain_deposit,
    "bubble": _bubble,
    "black_corner": _black_corner,
    "characters": _characters,
    "gamma_corr_up": _gamma,
    "gamma_corr_down": _gamma,
}


def corrupt(images: np.ndarray, flag: str, name: str, severity: int, seed: int) -> np.ndarray:
    """``images`` uint8 (N, H, W) or (N, H, W, 3) under ``name`` at ``severity`` (1-5): uint8 of the same shape.

    Deterministic: the same images, flag, name, severity and seed give the same result.
    """
    if name not in _APPLY:
        raise ValueError(f"unknown corruption {name!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    if name in RGB_ONLY and images.ndim != 4:
        raise ValueError(f"{name} needs RGB images")
    if not len(images):
        return images.copy()
    rng = np.random.default_rng(corruption_seed(seed, name, severity))
    param = severity_param(flag, name, severity)
    out = _APPLY[name](images, param, images.shape[1] / REFERENCE_SIZE, rng)
    return out.reshape(images.shape).astype(np.uint8)


def random_corruptions(images: np.ndarray, flag: str, names: list[str], seed: int) -> np.ndarray:
    """AugMedMNIST-C: each image under one corruption drawn from ``names`` at a severity drawn from 1-5.

    The images that share a (corruption, severity) draw are corrupted together, so the cost is one batched call
    per pair, not per image.
    """
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(names), len(images))
    severity = rng.integers(1, 6, len(images))
    out = np.empty_like(images)
    for k, name in enumerate(names):
        for s in SEVERITIES:
            idx = np.flatnonzero((which == k) & (severity == s))
            if len(idx):
                out[idx] = corrupt(images[idx], flag, name, s, seed)
    return out


def corruptions_grid(image: np.ndarray, flag: str, names: list[str], seed: int) -> Any:
    """A figure of one image under every corruption (rows) and severity (columns, after the clean image), to check
    by eye that each corruption looks like its name and grows with the severity."""
    from medmnist_pipeline.figures import image_grid

    rows = [(name, [image] + [corrupt(image[None], flag, name, s, seed)[0] for s in SEVERITIES]) for name in names]
    title = f"MedMNIST-C corruptions on one {flag} test image ({image.shape[0]} px)"
    return image_grid(rows, title, columns=6, column_titles=["clean"] + [f"severity {s}" for s in SEVERITIES])
