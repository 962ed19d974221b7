"""Reading any image a user might have as 8-bit RGB in display orientation."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from frcnn.errors import UserError

DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own default refusal limit (2 x Image.MAX_IMAGE_PIXELS)
_PIL_LIMIT_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is a module global: one reader at a time swaps it
MAX_PIXELS_FIX = "if the image is genuine, raise data.max_pixels (training) or max_pixels= (evaluate.py, infer.py)"


class ImageReadError(UserError, ValueError):
    """An image file is missing, truncated, corrupt or too large."""


def read_rgb(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into an ``[H, W, 3]`` uint8 RGB array, rotated by its EXIF orientation.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha composited over black by
    dropping it); 16-bit and 32-bit integer images are rescaled from their own range to 0..255, not
    clipped. ``max_pixels`` refuses decompression bombs before anything is decoded: it replaces PIL's
    own global limit (``Image.MAX_IMAGE_PIXELS``, whose ``DecompressionBombError`` is not an ``OSError``
    and would escape as a traceback), so a genuine image above PIL's limit is admitted by raising
    ``max_pixels`` (``None``: no limit).

    Raises:
        ImageReadError: naming the file, for anything PIL cannot decode completely or an image whose
            header claims more than ``max_pixels`` pixels.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Our limit below replaces PIL's; its warning (past half its limit) would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _read(path, max_pixels)
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except Image.DecompressionBombError as err:  # not expected: PIL's own limit is lifted while we read
        raise ImageReadError(f"{path}: {err}; {MAX_PIXELS_FIX}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err}); re-export or remove it") from err


def to_chw(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` array (uint8 RGB as :func:`read_rgb` gives) -> ``[3, H, W]`` tensor of the same dtype, sharing
    memory with a writable C-contiguous input (a channels-first view: call ``.contiguous()`` for a packed copy).
    A read-only array (``np.asarray`` of a PIL image) is copied: torch tensors cannot be read-only."""
    image = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    return torch.from_numpy(image).permute(2, 0, 1)


def _read(path: Path, max_pixels: int | None) -> np.ndarray:
    # PIL checks its limit in Image.open and, for some formats (TIFF, GIF, ICO, ...), again while
    # loading: lift it for the whole read, under a lock so that concurrent readers cannot leave it
    # lifted; our check below replaces it, with the file's name.
    with _PIL_LIMIT_LOCK:
        pil_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return _decode(path, max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def _decode(path: Path, max_pixels: int | None) -> np.ndarray:
    with Image.open(path) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageReadError(
                f"{path}: its header claims {im.width}x{im.height} = {im.width * im.height} pixels, over the limit "
                f"of {max_pixels}; {MAX_PIXELS_FIX}"
            )
        im.load()  # decode fully now: a truncated file fails here, not later
        im = ImageOps.exif_transpose(im)
        return _to_rgb_array(im)


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


# EXIF orientations 5-8 rotate by 90 or 270 degrees: the displayed image is the stored one transposed.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def display_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of ``path`` as :func:`read_rgb` returns it (after EXIF rotation), from the header only.

    For formats whose boxes are relative to the image (YOLO's normalized ``cx cy w h``), read in the
    orientation the labelling tool showed, as Ultralytics does.

    Raises:
        ImageReadError: naming the file, when it is missing or its header cannot be read.
    """
    path = Path(path)
    try:
        with _PIL_LIMIT_LOCK:  # only the header is read: PIL's decompression-bomb limit does not apply
            pil_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as im:
                    width, height = im.size
                    orientation = im.getexif().get(0x0112)  # the EXIF Orientation tag
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot read the image's size ({err}); re-export or remove it") from err
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)
