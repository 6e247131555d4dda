"""Pixels and masks from one file, whatever its PIL mode, as uint8 arrays.

Images of any mode (L, RGB, RGBA, P, LA, 1, I;16, I, F, CMYK ...) become uint8 (C, H, W)
at the model's size, by one rule per pixel type (never per image); a mask of any mode
becomes uint8 (H, W) in {0, 1}, any non-zero pixel of any plane being a defect. A file that
cannot be read this way is a DatasetError naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from ..base import ImageSize, image_hw
from ..errors import DatasetError

DECODE_VERSION = 2  # bump when decoding changes: invalidates on-disk caches, and rows and checkpoints (pipeline/job.py)
# Masks are read only for evaluation, so their rule names the row (config_hash), not the checkpoint: a bump
# re-evaluates rows from their checkpoints, never retrains. 2: any non-zero value of any channel, palette
# index or alpha is a defect (1: the mask converted to grey, which lost dark colours and class indices).
MASK_VERSION = 2
HUGE_PIXELS = 4096 * 4096  # larger images are box-reduced while decoding (memory); smaller are decoded as they are
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")  # Image.reduce refuses P, 1 and I;16


class Decoded(NamedTuple):
    """One decoded file: what the caches keep."""

    array: np.ndarray  # uint8: an image (C, H, W) or a mask (H, W) in {0, 1}
    original_size: tuple[int, int]  # the file's own upright (width, height)


def open_image(path: Path, reduce_to: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(the loaded PIL image at ``path``, upright (EXIF orientation applied), its full (width, height));
    DatasetError naming the file if it is unreadable.

    With ``reduce_to`` (width, height), an image of over ``HUGE_PIXELS`` is shrunk while it is
    decoded (JPEG ``draft``) or right after (``Image.reduce``, a box filter) to no less than
    twice that size, so a 5000 x 5000 photo never exists as several full-size copies.
    Images of MVTec's size (<= 1024 px) are untouched.
    """
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"image file {path} is empty (0 bytes); replace or remove it.")
        im = Image.open(path)  # reads the header only; PIL refuses decompression bombs here
        size = im.size
        huge = reduce_to is not None and im.width * im.height > HUGE_PIXELS
        if huge and im.format == "JPEG":
            im.draft(im.mode, (2 * reduce_to[0], 2 * reduce_to[1]))  # decode at 1/2, 1/4 or 1/8 scale
        im.load()  # decode now: truncated or corrupt files fail here, not later
        orientation = im.getexif().get(0x0112, 1)
        if orientation != 1:  # EXIF orientation (phone photos): show it as viewers do
            im = ImageOps.exif_transpose(im)
            size = size[::-1] if orientation in (5, 6, 7, 8) else size  # quarter turns swap width and height
        factor = min(im.width // (2 * reduce_to[0]), im.height // (2 * reduce_to[1])) if huge else 1
        if factor >= 2 and im.mode in _REDUCIBLE_MODES:
            im = im.reduce(factor)
        return im, size
    except DatasetError:
        raise
    except PermissionError:
        raise DatasetError(f"cannot read image {path} (permission denied); check the file's permissions.") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path} is not an image file PIL can read; replace or remove it.") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"image {path} is too large to decode safely ({str(e).rstrip('.')}); downscale it, "
            "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DatasetError(
            f"cannot read image {path} ({e}); the file is damaged or truncated, replace or remove it."
        ) from None


# --------------------------------------------------------------------------- images


def _scale_to_uint8(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit, 32-bit integer and float pixels to 0..255, by one rule per pixel type, never per image.

    A per-image rule (each image's own maximum) would make two exposures of one scene look
    alike, or a dark one look brighter than a bright one. So: 16-bit (``I;16*``) and 32-bit
    integer (``I``) images are read on the 16-bit scale, 65535 -> 255 (older Pillows open
    16-bit PNGs as ``I``, and 32-bit files from cameras and numpy hold 16-bit data); float
    (``F``) images on [0, 1]. Values outside that range are refused: any scaling of them
    would be a guess.
    """
    lo, hi = (a.min(), a.max()) if a.size else (0, 0)
    if mode == "F":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DatasetError(
                f"image {path} is a floating-point image holding NaN or infinite values; "
                "save it as an 8- or 16-bit PNG."
            )
        if lo < 0 or hi > 1:
            raise DatasetError(
                f"image {path} is a floating-point image with values from {lo:g} to {hi:g}, outside [0, 1], "
                "the range float images are read on; save it as an 8- or 16-bit PNG, or scale it to [0, 1]."
            )
        a = a.astype(np.float64) * 255.0
    else:
        if lo < 0 or hi > 65535:
            kind = "16-bit" if mode.startswith("I;16") else "32-bit integer"
            raise DatasetError(
                f"image {path} is a {kind} image with values from {int(lo)} to {int(hi)}, outside the 16-bit "
                "range 0..65535 such images are read on; save it as an 8- or 16-bit PNG."
            )
        a = a.astype(np.float64) / 257.0  # 65535 / 255 = 257 exactly
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _to_array(im: Image.Image, path: Path) -> np.ndarray:
    """uint8 (H, W) for gray or (H, W, 3) for colour; alpha is composited onto black."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I") or mode == "F":
        return _scale_to_uint8(np.asarray(im), mode, path)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        except (ValueError, OSError) as e:
            raise DatasetError(f"image {path} has mode {mode} that cannot be converted ({e}).") from None
    a = np.asarray(im)
    if im.mode in ("LA", "RGBA"):
        # Transparent pixels become black: a fixed background, whatever colour they stored.
        alpha = a[..., -1:].astype(np.uint16)
        a = ((a[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        if im.mode == "LA":
            a = a[..., 0]
    return a


def decode_image(path: Path, image_size: ImageSize, in_channels: int) -> Decoded:
    """(uint8 (C, H, W) image, original (width, height)); antialiased bilinear resize (PIL) to
    ``image_size`` (S or (H, W)), whatever the file's own aspect."""
    height, width = image_hw(image_size)
    im, original_size = open_image(path, reduce_to=(width, height))
    return Decoded(resize_array(_to_array(im, path), image_size, in_channels), original_size)


def resize_array(a: np.ndarray, image_size: ImageSize, in_channels: int) -> np.ndarray:
    """uint8 (H, W) gray or (H, W, 3) colour -> uint8 (C, H', W') at ``image_size``: luma for a
    1-channel model, antialiased bilinear resize (PIL), gray replicated for an RGB model."""
    height, width = image_hw(image_size)
    pil = Image.fromarray(a)
    if in_channels == 1 and a.ndim == 3:
        pil = pil.convert("L")  # ITU-R 601-2 luma
    # PIL's resize widens the filter support when it shrinks, so this is antialiased.
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    if out.ndim == 2:
        return np.repeat(out[None], in_channels, axis=0)  # (C, H, W), gray replicated for RGB models
    return np.ascontiguousarray(out.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)


# --------------------------------------------------------------------------- masks


def _mask_planes(im: Image.Image, path: Path) -> list[np.ndarray]:
    """The planes of a mask that can mark a defect, each (H, W) with its values as stored: every
    colour channel of a colour mask (a red and a dark-blue defect are both defects), the indices
    of a palette mask (its colours are a display choice), and 16-bit, 32-bit, float and bilevel
    values raw (no 8-bit scaling, which would turn a 16-bit 0/1 mask into zeros). With alpha,
    transparent pixels are normal (colour composited on black), and a mask whose colour is the
    same everywhere is marked in its alpha channel."""
    mode = im.mode
    if mode == "1":
        return [np.asarray(im, dtype=np.uint8)]
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            raise DatasetError(
                f"mask {path} holds NaN or infinite values; save it with 0 for normal and 255 for defective pixels."
            )
        return [a]
    if mode in ("L", "P"):
        return [np.asarray(im)]
    if mode in ("LA", "PA", "RGBA"):
        a = np.asarray(im)
        colour, alpha = a[..., :-1], a[..., -1]
        if (colour == colour[:1, :1]).all() and (alpha != alpha.flat[0]).any():
            return [alpha]  # one colour everywhere: the alpha channel marks the defect
        composited = (colour.astype(np.uint16) * alpha[..., None] + 127) // 255
        return [plane.astype(np.uint8) for plane in np.moveaxis(composited, -1, 0)]
    try:
        a = np.asarray(im if mode == "RGB" else im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    except (ValueError, OSError) as e:
        raise DatasetError(f"mask {path} has mode {mode} that cannot be converted ({e}).") from None
    return list(np.moveaxis(a, -1, 0))


def _solid_levels(a: np.ndarray) -> np.ndarray:
    """The values of ``a`` that fill a solid patch: some pixel of that value whose four neighbours
    share it. A class index or a colour fills areas; an antialiased or JPEG edge is a thin band."""
    cross = ndimage.generate_binary_structure(2, 1)
    flat = ndimage.minimum_filter(a, footprint=cross, mode="nearest") == ndimage.maximum_filter(
        a, footprint=cross, mode="nearest")
    return np.unique(a[flat])


def _marked(a: np.ndarray, path: Path) -> np.ndarray:
    """The defect pixels (bool (H, W)) of one mask plane, on its stored values.

    Two values (0/1, 0/255, 0/65535, bilevel, any bit depth): the non-zero (or higher) one.
    More values: in a label image (every value fills solid areas: class indices 0/1/3) any non-zero
    value is a defect; otherwise antialiased or JPEG-saved edges (thin bands of grey) are cut at
    half the plane's maximum, and a grey above the near-black band that fills solid areas is a
    defect of its own.
    Anything else (over a quarter of the pixels grey, e.g. a photo saved as a mask) is an error.
    """
    if a.dtype.kind in "bu" or (a.dtype.kind == "i" and a.size and 0 <= a.min() and a.max() <= 65535):
        hist = np.bincount(a.ravel().astype(np.intp), minlength=1)  # fast for 8- and 16-bit values
        levels = np.flatnonzero(hist)
        counts = hist[levels]
    else:
        levels, counts = np.unique(a, return_counts=True)
    if len(levels) <= 2:
        return a > levels[0] if (len(levels) == 2 and levels[0] > 0) else a > 0
    top = levels[-1]
    solid = _solid_levels(a)
    if len(solid) < len(levels):  # not a label image: flat patches near black are JPEG noise, not marks
        solid = solid[solid > top / 10]
    solid = solid[(solid > 0) & (solid < top / 2)]  # marks of their own below the edge cut
    fine = (levels <= top / 10) | (levels >= top - top / 10) | np.isin(levels, solid)  # black, top or a solid mark
    near = counts[fine].sum()
    if near < 0.75 * a.size:
        raise DatasetError(
            f"mask {path} is not a binary mask ({len(levels)} grey levels, "
            f"{100 * (1 - near / a.size):.0f}% of pixels neither black nor white); "
            "save it with 0 for normal and 255 for defective pixels."
        )
    return (a >= top / 2) | np.isin(a, solid)


def read_mask(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """(bool (H, W) defect pixels of the mask file at its own size, its original (width, height)).

    Any non-zero pixel of any plane (``_mask_planes``: colour channel, palette index, alpha) is
    a defect, read on the stored values; antialiased edges are cut at half the plane's maximum
    and masks that are mostly grey are refused (``_marked``).
    """
    im, original_size = open_image(path)
    planes = _mask_planes(im, path)
    if len(planes) > 1:  # colour: a channel that stays near black (JPEG noise of a red mask's G and B) marks nothing
        top = max(float(plane.max()) for plane in planes)
        planes = [plane for plane in planes if plane.max() > top / 10] or planes[:1]
    return np.logical_or.reduce([_marked(plane, path) for plane in planes]), original_size


def resize_mask(marked: np.ndarray, image_size: ImageSize | None) -> np.ndarray:
    """uint8 (H, W) in {0, 1} from defect pixels (``read_mask``): nearest resize to ``image_size``
    (S or (H, W); none if it is None: the mask at its own size)."""
    if image_size is None:
        return np.ascontiguousarray(marked, dtype=np.uint8)
    height, width = image_hw(image_size)
    pil = Image.fromarray(marked.astype(np.uint8)).resize((width, height), Image.NEAREST)
    return np.asarray(pil).copy()


def decode_mask(path: Path, image_size: ImageSize | None) -> Decoded:
    """(uint8 (H, W) mask in {0, 1}, original (width, height)): ``read_mask``, then ``resize_mask``."""
    marked, original_size = read_mask(path)
    return Decoded(resize_mask(marked, image_size), original_size)
