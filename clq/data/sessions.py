"""Acquisition "sessions": fixed, documented nuisances that make a class recur in new conditions.

CORe50 films every object in 11 sessions (different backgrounds, lighting, poses). The offline stream
imitates that: each session is one deterministic transformation applied to every image drawn from it.
Images are first placed on a square RGB canvas of `image_size` pixels (the glyph scaled to 7/8 of the
canvas, as 28 px in 32 px), then the session's nuisance is applied:

=============  ==============================================================================
session        nuisance
=============  ==============================================================================
clean          none: the glyph on a black background
dim            brightness x 0.5
low_contrast   contrast x 0.4 around a mid-grey background (x -> 0.4 x + 0.3 * 255)
texture        alpha-composited over a fixed diagonal-stripe background texture (amplitude 90)
shift          translated by +1/8 canvas down and +1/10 canvas right (cropped at the border)
small          scaled to 0.65 of its size, centred
tint           coloured: RGB gains (1.0, 0.6, 0.25)
flip           mirrored left-right
=============  ==============================================================================
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["SESSIONS", "to_canvas", "render_session"]

SESSIONS = ("clean", "dim", "low_contrast", "texture", "shift", "small", "tint", "flip")


def _to_float_nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, 1|3], got shape {x.shape}")
    return x.astype(np.float32)


def to_canvas(x: np.ndarray, image_size: int, scale: float = 0.875) -> np.ndarray:
    """Place images on a black square canvas.

    Args:
      x: uint8 [N, h, w] or [N, h, w, C] with C in {1, 3}.
      image_size: canvas side in pixels.
      scale: glyph side as a fraction of the canvas.
    Returns:
      float32 [N, image_size, image_size, 3] in 0..255.
    """
    canvas = _canvas(x, image_size, scale)
    return np.repeat(canvas, 3, axis=-1) if canvas.shape[-1] == 1 else canvas


def _canvas(x: np.ndarray, image_size: int, scale: float) -> np.ndarray:
    """`to_canvas` before grey images become RGB: float32 [N, image_size, image_size, C], C as in `x`."""
    x = _to_float_nhwc(x)
    n, h, w, c = x.shape
    side = max(1, int(round(image_size * scale)))
    if (h, w) != (side, side):
        x = ndimage.zoom(x, (1, side / h, side / w, 1), order=1, grid_mode=True, mode="nearest")
        x = x[:, :side, :side]
    canvas = np.zeros((n, image_size, image_size, c), np.float32)
    top = (image_size - x.shape[1]) // 2
    left = (image_size - x.shape[2]) // 2
    canvas[:, top : top + x.shape[1], left : left + x.shape[2]] = _clip_255(x)
    return canvas


def _clip_255(a: np.ndarray) -> np.ndarray:
    """`a` (float32, ours to overwrite) clipped to [0, 255] in place: ``np.clip``'s values without its allocations
    and its slower loop (~0.2 s of building the default stream)."""
    return np.minimum(np.maximum(a, 0, out=a), 255, out=a)


def _texture(image_size: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij")
    period = max(4.0, image_size / 6)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (i + j) / period)
    return (90.0 * stripes)[..., None] * np.array([0.8, 1.0, 0.7], np.float32)


def render_session(x: np.ndarray, session: str, image_size: int) -> np.ndarray:
    """Render images under one session's nuisance.

    Args:
      x: uint8 [N, h, w] or [N, h, w, C] raw images.
      session: one of `SESSIONS`.
      image_size: output side in pixels.
    Returns:
      uint8 [N, image_size, image_size, 3].
    """
    if session not in SESSIONS:
        raise ValueError(f"data.sessions entries must be among {list(SESSIONS)}, got {session!r}")
    # Grey images stay one channel until the end (a third of the work): every nuisance but texture and tint acts
    # on each channel alike, and those two broadcast a grey canvas to RGB with the same values as an RGB one.
    canvas = _canvas(x, image_size, 0.875 * 0.65 if session == "small" else 0.875)
    if session == "dim":
        canvas = canvas * 0.5
    elif session == "low_contrast":
        canvas = 0.4 * canvas + 0.3 * 255
    elif session == "texture":
        alpha = canvas.max(axis=-1, keepdims=True) / 255.0
        canvas = alpha * canvas + (1 - alpha) * _texture(image_size)
    elif session == "shift":
        dy, dx = max(1, image_size // 8), max(1, image_size // 10)
        shifted = np.zeros_like(canvas)
        shifted[:, dy:, dx:] = canvas[:, : image_size - dy, : image_size - dx]
        canvas = shifted
    elif session == "tint":
        canvas = canvas * np.array([1.0, 0.6, 0.25], np.float32)
    elif session == "flip":
        canvas = canvas[:, :, ::-1]
    out = _clip_255(np.round(canvas, out=canvas)).astype(np.uint8)  # `canvas` is this call's own array (or a view)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out
