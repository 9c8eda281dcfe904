"""Drawing for the built-in clutter data set: shapes, textured backgrounds, distractors.

Pure numpy and Pillow, driven only by the numpy Generators it is given, so a sample is a function of its
seeds. Classes differ by shape alone: colours are drawn per sample and every colour can appear on the
object, the background and the distractors alike.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "object_polygons", "render_alpha", "alpha_box", "background", "cue_tint", "draw_distractors",
           "composite"]

_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for anti-aliased edges
_N_ROUND = 40  # polygon vertices for circle and ring
# Tuned with benchmarks/bench_clutter_learnable.py: at full texture contrast and with more distractors a
# resnet18 trained from scratch on 2000 images memorised the backgrounds and stayed near chance.
BG_CONTRAST = 0.35
N_DISTRACTORS = (0, 4)

# Polygons in unit coordinates (radius ~1 around the origin). Square and diamond differ only by a 45 degree
# turn and a squeeze, so their rotation is limited; every other shape may take any rotation.


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


_W = 0.34  # half-width of the cross arms
_SHAPE_POLYGONS: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_regular(_N_ROUND), 255)],
    "square": [(np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]), 255)],
    "triangle": [(_regular(3), 255)],
    "cross": [(np.array([[-_W, -1], [_W, -1], [_W, -_W], [1, -_W], [1, _W], [_W, _W], [_W, 1], [-_W, 1],
                         [-_W, _W], [-1, _W], [-1, -_W], [-_W, -_W]]), 255)],
    "ring": [(_regular(_N_ROUND), 255), (_regular(_N_ROUND, 0.55), 0)],
    "star": [(_star(), 255)],
    "diamond": [(np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]]), 255)],
    "hexagon": [(_regular(6, 1.0, 0.0), 255)],
    "l_shape": [(np.array([[-0.7, -1], [-0.15, -1], [-0.15, 0.45], [0.7, 0.45], [0.7, 1], [-0.7, 1]]), 255)],
    "bar": [(np.array([[-1.0, -0.26], [1.0, -0.26], [1.0, 0.26], [-1.0, 0.26]]), 255)],
}
_MAX_ROTATION = {"square": 15.0, "diamond": 15.0}
SHAPES: tuple[str, ...] = tuple(_SHAPE_POLYGONS)


def object_polygons(rng: np.random.Generator, shape: str, size: int, scale: tuple[float, float]
                    ) -> list[tuple[np.ndarray, int]]:
    """Place one class object: random scale, squeeze, rotation and position, fully inside the image.

    Args:
        rng: the object's generator.
        shape: one of :data:`SHAPES`.
        size: image side in pixels.
        scale: range of the object's extent as a fraction of the image side.

    Returns:
        ``[(vertices (N, 2) in pixels, fill)]`` to draw in order (fill 0 cuts a hole).
    """
    extent = rng.uniform(*scale) * size
    squeeze = rng.uniform(0.8, 1.0)
    limit = math.radians(_MAX_ROTATION.get(shape, 180.0))
    angle = rng.uniform(-limit, limit)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    placed = [((pts * np.array([squeeze, 1.0])) @ rot.T, fill) for pts, fill in _SHAPE_POLYGONS[shape]]
    # scale so the longer side of the rotated outline spans `extent`, then centre it inside the image
    outline = placed[0][0]
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    k = extent / float((hi - lo).max())
    lo, hi = lo * k, hi * k
    cx = rng.uniform(-lo[0] + 1, size - hi[0] - 1)
    cy = rng.uniform(-lo[1] + 1, size - hi[1] - 1)
    return [(pts * k + np.array([cx, cy]), fill) for pts, fill in placed]


def render_alpha(polygons: list[tuple[np.ndarray, int]], size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1], drawn at 4x and box-filtered down."""
    big = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for pts, fill in polygons:
        draw.polygon([tuple(p) for p in pts * _SUPERSAMPLE], fill=fill)
    small = big.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def alpha_box(alpha: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box ``(x0, y0, x1, y1)`` in [0, 1] around every pixel the object touches."""
    ys, xs = np.nonzero(alpha > 0.0)
    h, w = alpha.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    g = int(rng.integers(2, 9))
    grid = (rng.random((g, g, 3)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    theta, period, phase = rng.uniform(0, math.pi), rng.uniform(3.0, 14.0), rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period + phase)
    if rng.random() < 0.5:  # hard-edged stripes as well as smooth ones
        wave = np.sign(wave)
    w = (0.5 + 0.5 * wave)[..., None]
    return w * _colour(rng) + (1 - w) * _colour(rng)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 26))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.03, 0.11, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(img, dtype=np.float32) / 255.0


_TEXTURES = (_value_noise, _stripes, _blobs)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered texture (size, size, 3) in [0, 1]: value noise, stripes or blobs, sometimes two mixed."""
    first = _TEXTURES[int(rng.integers(len(_TEXTURES)))](rng, size)
    if rng.random() < 0.35:
        second = _TEXTURES[int(rng.integers(len(_TEXTURES)))](rng, size)
        first = 0.5 * (first + second)
    # damp the texture around its mean so the class object, painted at full contrast, stays the salient thing
    mean = first.mean(axis=(0, 1), keepdims=True)
    first = mean + BG_CONTRAST * (first - mean)
    return first + rng.normal(0.0, 0.04, first.shape).astype(np.float32)


def cue_tint(cls: int, num_classes: int) -> np.ndarray:
    """The spurious cue of class ``cls``: a saturated hue, one per class, evenly spaced on the colour wheel."""
    return np.array(colorsys.hsv_to_rgb(cls / num_classes, 0.9, 0.95), dtype=np.float32)


def draw_distractors(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Strokes, arcs and small irregular blobs that belong to no class, in random colours."""
    size = img.shape[0]
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(*N_DISTRACTORS))):
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        width = int(rng.integers(1, 3))
        if kind == 0:
            pts = [tuple(p) for p in rng.uniform(0, size, (int(rng.integers(2, 4)), 2))]
            draw.line(pts, fill=fill, width=width)
        elif kind == 1:
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(0.08, 0.25) * size
            start = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + rng.uniform(60, 200), fill=fill, width=width)
        else:  # an irregular polygon, smaller than the class objects
            n = int(rng.integers(5, 9))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            r = rng.uniform(0.4, 1.0, n) * rng.uniform(0.05, 0.12) * size
            c = rng.uniform(0, size, 2)
            draw.polygon([tuple(p) for p in np.stack([np.cos(t) * r, np.sin(t) * r], 1) + c], fill=fill)
    return np.asarray(pil, dtype=np.float32) / 255.0


def _luma(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def composite(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray, min_contrast: float = 0.5,
              min_luma: float = 0.3) -> np.ndarray:
    """Paint the object over ``img`` in a random colour that stands out from what lies under it.

    The colour is random per sample, lighter or darker than its surroundings, so it says nothing about
    the class; the luminance gap is what lets a small network find the outline from few samples.

    Args:
        rng: the colour generator.
        img: the background with distractors (H, W, 3) in [0, 1].
        alpha: the object's coverage (H, W).
        min_contrast: least RGB distance between the object colour and the mean colour under it.
        min_luma: least luminance difference between the two.

    Returns:
        The finished image (H, W, 3) as uint8.
    """
    under = (img * alpha[..., None]).sum((0, 1)) / max(float(alpha.sum()), 1e-6)
    best, best_score = None, -1.0
    for _ in range(64):  # rejection sampling keeps the colour random yet visible
        c = _colour(rng)
        score = min(float(np.linalg.norm(c - under)) / min_contrast, abs(_luma(c) - _luma(under)) / min_luma)
        if score > best_score:
            best, best_score = c, score
        if score >= 1.0:
            break
    shade = best * rng.uniform(0.9, 1.0)  # a little shading, not a flat cut-out
    out = img * (1 - alpha[..., None]) + shade * alpha[..., None]
    out = out + rng.normal(0.0, 0.02, out.shape).astype(np.float32)
    return (np.clip(out, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
