"""Reading any image a user might have as 8-bit RGB in display orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file is missing, truncated, corrupt or too large."""


def read_rgb(path: str | Path, *, max_pixels: int | None = 178_956_970) -> np.ndarray:
    """Decode ``path`` into an ``[H, W, 3]`` uint8 RGB array, rotated by its EXIF orientation.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha composited over black by
    dropping it); 16-bit and 32-bit integer images are rescaled from their own range to 0..255, not
    clipped. ``max_pixels`` refuses decompression bombs (PIL's own default limit).

    Raises:
        ImageReadError: naming the file, for anything PIL cannot decode completely.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {im.width}x{im.height} = {im.width * im.height} pixels exceeds the limit of "
                    f"{max_pixels}; raise data.max_pixels if the image is genuine"
                )
            im.load()  # decode fully now: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im)
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err}); re-export or remove it") from err


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()
