"""A dataset in the MVTec AD layout, decoded once into uint8 tensors.

Layout (Bergmann et al., "MVTec AD", CVPR 2019)::

    <root>/<category>/train/good/*.png            defect-free training images
    <root>/<category>/test/good/*.png             defect-free test images
    <root>/<category>/test/<defect>/*.png         defective test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   their pixel masks

A mask may also be named ``<stem>.<ext>``, in any image format, letter case or bit depth (its
non-zero pixels are the defect); one left beside its image as ``test/<defect>/<stem>_mask.*``
is used as the mask, never as a test image. docs/faults.md lists what else is accepted,
warned about or refused.

Any folder in this layout is a category (users bring their own products). Every file is
decoded and resized once at construction, in a thread pool (PIL releases the GIL while it
inflates and resizes), and kept as uint8 tensors: re-decoding 1024-px PNGs every epoch
costs more than the model. Decoded files are also kept in a process-wide memory cache
(train, val and test of several models reuse them) and, with ``cache_dir``, on disk, keyed
by image size, channels and file identity (path, mtime, size).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import DEFAULT_IMAGE_SIZE, ImageSize, canonical_size, image_hw, size_label
from .errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
MARKER_FILE = "DATASET.json"  # written by pipeline/demo_data.py at the root of the demo dataset
SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # of train/good held out as val (threshold, validation loss)
DECODE_VERSION = 2  # bump when decoding changes: invalidates on-disk caches, and rows and checkpoints (pipeline/job.py)
MEMORY_CACHE_LIMIT = 4 * 1024**3  # bytes of decoded arrays kept across datasets (LRU)
HUGE_PIXELS = 4096 * 4096  # larger images are box-reduced while decoding (memory); smaller are decoded as they are
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")  # Image.reduce refuses P, 1 and I;16
INVERTED_MASK_SHARE = 0.5  # a mask marking more of its image as defective is probably saved inverted
# Folder names that mean "defect-free" (in test/) or "the masks" (next to test/), compared casefolded
# without spaces, "-" and "_": a test/ folder so named is not a defect type, and masks in such a
# folder are missed, both silently, unless said.
GOOD_FOLDER_NAMES = ("good", "ok", "normal", "nominal", "defectfree", "nodefect", "nodefects")
MASK_FOLDER_NAMES = ("groundtruth", "gt", "mask", "masks", "groundtruths", "annotations", "labels")

_HOW_TO_GET_DATA = (
    "put MVTec AD in ./mvtec_anomaly_detection or pass --data-root DIR, "
    "or write the built-in demo dataset with `python -m pipeline demo-data --out data/demo` and use that"
)


# --------------------------------------------------------------------------- the layout


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _folded(name: str) -> str:
    return "".join(c for c in name.casefold() if c not in " -_")


def _image_files(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted by name; hidden files and other extensions are ignored.

    Links are followed. A link whose target is gone is an error, not a file left out: a
    dataset linked from elsewhere whose source moved would otherwise lose images silently.
    """
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if not (_visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if p.is_symlink() and not p.exists():
            raise DatasetError(
                f"{p} is a broken symbolic link (its target {os.readlink(p)} does not exist); fix or remove the link."
            )
        if p.is_file():
            out.append(p)
    return sorted(out)


def _is_mask_name(path: Path) -> bool:
    return path.stem.casefold().endswith("_mask")


def _image_stem(mask: Path) -> str:
    """The casefolded stem of the image a mask file belongs to: ``000_MASK.png`` and ``000.png`` -> ``000``."""
    stem = mask.stem.casefold()
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def _mask_index(files: list[Path]) -> dict[str, Path]:
    """{casefolded image stem: its mask} for the mask files given. ``<stem>_mask.*`` comes before
    ``<stem>.*`` and ``.png`` before other extensions, as in MVTec AD; letter case is ignored
    (``000_MASK.PNG``), since masks exported by other tools often differ in case only."""
    ranked = sorted(files, key=lambda f: (not _is_mask_name(f), f.suffix.lower() != ".png", f.name))
    index: dict[str, Path] = {}
    for f in ranked:
        index.setdefault(_image_stem(f), f)
    return index


def _test_subdirs(folder: Path) -> list[Path]:
    """The folders of ``<category>/test/``: ``good`` first, then the defect types by name."""
    test = folder / "test"
    subdirs = [p for p in test.iterdir() if p.is_dir() and _visible(p)] if test.is_dir() else []
    return sorted(subdirs, key=lambda p: (p.name != "good", p.name))


def _check_root(root) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"data root {root} does not exist; {_HOW_TO_GET_DATA}.")
    if not root.is_dir():
        raise DatasetError(f"data root {root} is a file, not a folder; {_HOW_TO_GET_DATA}.")
    return root


def list_categories(root) -> list[str]:
    """Sorted names of the category folders under ``root`` (those with a ``train/good`` folder).

    Raises DatasetError if ``root`` is missing or holds no category, so that callers never
    silently run on nothing.
    """
    root = _check_root(root)
    found = sorted(p.name for p in root.iterdir() if _visible(p) and (p / "train" / "good").is_dir())
    if not found:
        if (root / "train" / "good").is_dir():
            raise DatasetError(
                f"{root} is a category folder, not a data root; pass its parent folder {root.parent} as the data root."
            )
        raise DatasetError(
            f"no category folders (<category>/train/good/) found in {root}; {_HOW_TO_GET_DATA}."
        )
    return found


def _read_marker(root: Path) -> dict | None:
    try:
        marker = json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def dataset_name(root) -> str:
    """"demo" for the built-in demo dataset (its DATASET.json marker), "mvtec_ad" when every
    category has an MVTec AD name, else the root folder's name."""
    root = Path(root).expanduser()
    marker = _read_marker(root)
    if marker and marker.get("name"):
        return str(marker["name"])
    names = set(list_categories(root))
    if names and names <= set(MVTEC_TEXTURES + MVTEC_OBJECTS):
        return "mvtec_ad"
    return root.resolve().name


def category_type(root, category: str) -> str:
    """ "texture" or "object": the demo marker's declared type, else MVTec AD's by name; else "custom"."""
    marker = _read_marker(Path(root).expanduser())
    if marker and isinstance(marker.get("categories"), dict) and category in marker["categories"]:
        return str(marker["categories"][category])
    if category in MVTEC_TEXTURES:
        return "texture"
    if category in MVTEC_OBJECTS:
        return "object"
    return "custom"


def _category_dir(root, category: str) -> Path:
    root = _check_root(root)
    folder = root / category
    if not category or not folder.is_dir() or not _visible(folder):
        try:
            found = ", ".join(list_categories(root))
        except DatasetError:
            found = "none"
        raise DatasetError(f"category {category!r} not found in {root}; categories found: {found}.")
    if not (folder / "train" / "good").is_dir():
        raise DatasetError(f"category folder {folder} has no train/good folder of defect-free images; add one.")
    return folder


def _header_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened, not yet decoded image (1 if none). A PNG's
    ``getexif()`` decodes the whole file to look for an eXIf chunk after the pixels; this reads
    only one found before them (where writers put it), so a header stays a header."""
    if im.format != "PNG":
        return im.getexif().get(0x0112, 1)  # JPEG, TIFF, WebP: EXIF is in the header
    exif = Image.Exif()
    if "exif" in im.info:
        exif.load(im.info["exif"])
    return exif.get(0x0112, 1)


def image_dimensions(root, category: str) -> list[tuple[int, int]]:
    """The upright (width, height) of every image of a category (train/good and test/, masks
    excluded), read from the file headers without decoding: what the input size is chosen
    from (``pipeline.sizes``). DatasetError naming a file whose header cannot be read."""
    folder = _category_dir(root, category)
    files = _image_files(folder / "train" / "good") + [
        f for sub in _test_subdirs(folder) for f in _image_files(sub) if not _is_mask_name(f)
    ]
    out = []
    for path in files:
        try:
            with Image.open(path) as im:  # the header only
                width, height = im.size
                quarter_turn = _header_orientation(im) in (5, 6, 7, 8)  # EXIF orientation, as _open
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read the size of image {path} ({e}); replace or remove the file.") from None
        out.append((height, width) if quarter_turn else (width, height))
    return out


# --------------------------------------------------------------------------- decoding


def _open(path: Path, reduce_to: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
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


def _decode_image(path: Path, image_size: ImageSize, in_channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (C, H, W) image, original (width, height)); antialiased bilinear resize (PIL) to
    ``image_size`` (S or (H, W)), whatever the file's own aspect."""
    height, width = image_hw(image_size)
    im, original_size = _open(path, reduce_to=(width, height))
    a = _to_array(im, path)
    pil = Image.fromarray(a)
    if in_channels == 1 and a.ndim == 3:
        pil = pil.convert("L")  # ITU-R 601-2 luma
    # PIL's resize widens the filter support when it shrinks, so this is antialiased.
    pil = pil.resize((width, height), Image.BILINEAR)
    out = np.asarray(pil)
    if out.ndim == 2:
        out = np.repeat(out[None], in_channels, axis=0)  # (C, H, W), gray replicated for RGB models
    else:
        out = np.ascontiguousarray(out.transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
    return out, original_size


def _mask_values(im: Image.Image, path: Path) -> np.ndarray:
    """A mask's pixel values as stored, (H, W): the largest channel of a colour mask. 16-bit,
    32-bit, float and bilevel masks keep their raw values (no 8-bit scaling, which would turn
    a 16-bit 0/1 mask into zeros); palette, alpha and other modes go through ``_to_array``."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            raise DatasetError(
                f"mask {path} holds NaN or infinite values; save it with 0 for normal and 255 for defective pixels."
            )
        return a
    a = _to_array(im, path)
    return a.max(axis=2) if a.ndim == 3 else a  # a coloured mask: any non-black channel marks the defect


def _decode_mask(path: Path, image_size: ImageSize | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (H, W) mask in {0, 1}, original (width, height)); nearest resize to ``image_size``
    (S or (H, W); none if it is None: the mask at its own size).

    A mask of two values (0/1, 0/255, 0/65535, bilevel, any bit depth) marks its non-zero
    pixels. Antialiased or JPEG-saved masks (most pixels near black or near its own maximum)
    are thresholded at half their maximum, on the stored values. Anything else (over a
    quarter of the pixels grey, e.g. a photo saved as a mask) is an error.
    """
    im, original_size = _open(path)
    a = _mask_values(im, path)
    if a.dtype.kind in "bu" or (a.dtype.kind == "i" and a.size and 0 <= a.min() and a.max() <= 65535):
        hist = np.bincount(a.ravel().astype(np.intp), minlength=1)  # fast for 8- and 16-bit values
        levels = np.flatnonzero(hist)
        counts = hist[levels]
    else:
        levels, counts = np.unique(a, return_counts=True)
    if len(levels) <= 2:
        binary = a > levels[0] if (len(levels) == 2 and levels[0] > 0) else a > 0
    else:
        top = levels[-1]
        near = counts[levels <= top / 10].sum() + counts[levels >= top - top / 10].sum()  # near black or near top
        if near < 0.75 * a.size:
            raise DatasetError(
                f"mask {path} is not a binary mask ({len(levels)} grey levels, "
                f"{100 * (1 - near / a.size):.0f}% of pixels neither black nor white); "
                "save it with 0 for normal and 255 for defective pixels."
            )
        binary = a >= top / 2
    if image_size is None:
        return np.ascontiguousarray(binary, dtype=np.uint8), original_size
    height, width = image_hw(image_size)
    pil = Image.fromarray(binary.astype(np.uint8)).resize((width, height), Image.NEAREST)
    return np.asarray(pil).copy(), original_size


# --------------------------------------------------------------------------- caches

_MEMORY_CACHE: OrderedDict = OrderedDict()  # key -> (array, original_size), least recently used first
_MEMORY_BYTES = 0
_MEMORY_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget every decoded file kept in this process."""
    global _MEMORY_BYTES
    with _MEMORY_LOCK:
        _MEMORY_CACHE.clear()
        _MEMORY_BYTES = 0


def _memory_get(key):
    with _MEMORY_LOCK:
        hit = _MEMORY_CACHE.get(key)
        if hit is not None:
            _MEMORY_CACHE.move_to_end(key)
        return hit


def _memory_put(key, value) -> None:
    global _MEMORY_BYTES
    with _MEMORY_LOCK:
        if key in _MEMORY_CACHE:
            return
        _MEMORY_CACHE[key] = value
        _MEMORY_BYTES += value[0].nbytes
        while _MEMORY_BYTES > MEMORY_CACHE_LIMIT and len(_MEMORY_CACHE) > 1:
            _, (old, _) = _MEMORY_CACHE.popitem(last=False)
            _MEMORY_BYTES -= old.nbytes


def _identity(path: Path) -> tuple[str, int, int]:
    """What names a file's content for the caches: absolute path, mtime (ns) and size."""
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _disk_cache_file(cache_dir: Path, category_dir: Path, group: str, image_size: ImageSize,
                     in_channels: int) -> Path:
    digest = hashlib.sha1(str(category_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{category_dir.name}-{group}-{size_label(image_size)}px-{in_channels}ch-{digest}.pt"


def _disk_load(file: Path) -> dict:
    """{(kind, *identity): (array, original_size)} from a cache file; {} if absent, stale or unreadable."""
    if not file.is_file():
        return {}
    try:
        blob = torch.load(file, weights_only=True)
        if blob.get("version") != DECODE_VERSION:
            return {}
        return {
            (e["kind"], e["path"], e["mtime_ns"], e["size"]): (e["data"].numpy(), tuple(e["original_size"]))
            for e in blob["entries"]
        }
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable dataset cache {file} ({e}); it will be rewritten.", stacklevel=3)
        return {}


def _disk_save(file: Path, entries: dict) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves a half cache."""
    file.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "version": DECODE_VERSION,
        "entries": [
            {"kind": k[0], "path": k[1], "mtime_ns": k[2], "size": k[3],
             "data": torch.from_numpy(np.ascontiguousarray(v[0])), "original_size": list(v[1])}
            for k, v in entries.items()
        ],
    }
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, file)


# --------------------------------------------------------------------------- the dataset


class MVTecAD(torch.utils.data.Dataset):
    """One category of a dataset in MVTec AD layout, decoded once into uint8 tensors.

    Attributes (what training and evaluation use, batched):
        images: uint8 (N, C, H, W), every file resized to ``image_size`` (S for S x S, or
        (H, W)) whatever its own aspect; masks: uint8 (N, H, W) in {0, 1} (zeros for good images);
        labels: int64 (N,), 0 good / 1 defective; defect_types: list[str] ("good" for good);
        paths: list[str]; has_masks: False if a defective image has no mask (pixel metrics
        then cannot be computed); category, split, image_size, in_channels; n_files (the
        image files the split was drawn from: train/good for train and val) and n_val (how many
        of them were held out as val; 0 for test).

    ``val`` is a seeded hold-out of ``val_fraction`` of train/good (at least one image when
    the fraction is > 0 and there are two or more), disjoint from ``train``.
    """

    def __init__(
        self,
        root,
        category: str,
        split: str = "train",
        image_size: ImageSize = DEFAULT_IMAGE_SIZE,
        in_channels: int = 3,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        seed: int = 0,
        cache_dir=None,
        *,
        workers: int | None = None,  # decode threads; None = min(8, CPU count)
        memory_cache: bool = True,  # reuse files decoded earlier in this process
    ):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
        image_size = canonical_size(image_size)
        if min(image_hw(image_size)) < 1:
            raise ConfigError(f"image_size must be positive, got {size_label(image_size)}.")
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {in_channels!r}.")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
        self.root = Path(root).expanduser()
        self.category, self.split = category, split
        self.image_size, self.in_channels = image_size, in_channels
        self.val_fraction, self.seed = val_fraction, seed
        self._workers = workers or min(8, os.cpu_count() or 1)
        self._memory_cache = memory_cache
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        folder = _category_dir(self.root, category)

        hints = {}
        if split == "test":
            images, labels, defects, masks, hints = self._test_files(folder)
            group = "test"
        else:
            train = _image_files(folder / "train" / "good")
            if not train:
                raise DatasetError(
                    f"no training images in {folder / 'train' / 'good'} "
                    f"(expected {', '.join(IMAGE_EXTENSIONS)} files of defect-free samples); add some."
                )
            images, labels, defects, masks = train, [0] * len(train), ["good"] * len(train), [None] * len(train)
            group = "train"
        # What the split was drawn from, so that a too-small train split can say why (pipeline.train.fit).
        self.n_files = len(images)  # image files of train/good (train, val) or of test/
        self.n_val = self._n_val(len(images)) if group == "train" else 0  # of them held out as val

        # Decode everything of this group (train and val share train/good), from the caches when possible.
        decoded = self._decode_all(folder, group, images, [m for m in masks if m is not None])
        keep = self._select(len(images)) if group == "train" else list(range(len(images)))

        height, width = image_hw(image_size)
        self.paths = [str(images[i]) for i in keep]
        self.labels = torch.tensor([labels[i] for i in keep], dtype=torch.int64)
        self.defect_types = [defects[i] for i in keep]
        image_arrays = [decoded[("image", images[i])][0] for i in keep]
        self.images = (
            torch.from_numpy(np.stack(image_arrays)) if keep
            else torch.empty((0, in_channels, height, width), dtype=torch.uint8)
        )  # (N, C, H, W)
        self.original_sizes = [tuple(decoded[("image", images[i])][1]) for i in keep]  # (width, height) of each file
        self.mask_paths = [masks[i] for i in keep]  # None for good images and defective ones without a mask
        self.masks = torch.zeros((len(keep), height, width), dtype=torch.uint8)  # (N, H, W)
        missing, empty, inverted = [], [], []
        for row, i in enumerate(keep):
            if labels[i] == 0:
                continue
            if masks[i] is None:
                missing.append(images[i])
                continue
            mask, mask_size = decoded[("mask", masks[i])]
            image_size_px = self.original_sizes[row]
            if tuple(mask_size) != tuple(image_size_px):
                raise DatasetError(
                    f"mask {masks[i]} is {mask_size[0]}x{mask_size[1]} px but its image {images[i]} is "
                    f"{image_size_px[0]}x{image_size_px[1]} px; a mask must have the size of its image."
                )
            share = float(mask.mean())
            if share == 0:
                empty.append(masks[i])
            elif share > INVERTED_MASK_SHARE:
                inverted.append((masks[i], share))
            self.masks[row] = torch.from_numpy(mask)
        self.has_masks = not missing
        self._warn(folder, images, keep, hints, missing, empty, inverted)

    def _warn(self, folder: Path, images: list[Path], keep: list[int], hints: dict, missing: list, empty: list,
              inverted: list) -> None:
        """One warning per kind of oddity found while loading, each naming a count and the first file."""
        category, n_masks = self.category, sum(1 for p in self.mask_paths if p is not None)
        if hints.get("beside"):
            warnings.warn(hints["beside"], stacklevel=3)
        if missing:
            extra = "".join(f"; {h}" for h in (hints.get("unmatched"), hints.get("folder")) if h)
            warnings.warn(
                f"{len(missing)} defective test image(s) of {category} have no mask in ground_truth/ "
                f"(first: {missing[0]}); pixel metrics cannot be computed for this category{extra}.",
                stacklevel=3,
            )
        # A thin defect can vanish at the model's size only; the pixel metrics read the file again at
        # the evaluation size (masks_at), so only a file empty at its own size is worth a warning.
        empty = [path for path in empty if not _decode_mask(path, None)[0].any()]
        if empty:
            warnings.warn(
                f"{len(empty)} of the {n_masks} masks of {category} are empty although their images are defective "
                f"(first: {empty[0]}); mark defect pixels non-zero (255) in them.",
                stacklevel=3,
            )
        if inverted:
            # A defect covering most of its image is rare (MVTec AD has none); a mask saved black on
            # white is not. Warned, not refused or flipped: the user knows which it is.
            path, share = inverted[0]
            warnings.warn(
                f"{len(inverted)} of the {n_masks} masks of {category} mark over "
                f"{INVERTED_MASK_SHARE:.0%} of their image as defective (first: {path}, {share:.0%}), so they are "
                "probably inverted (white = normal): save defects white (255) on black (0).",
                stacklevel=3,
            )
        seen: dict[tuple, Path] = {}
        twins = []
        for path in images:
            first = seen.setdefault((path.parent, path.stem.casefold()), path)
            if first is not path:
                twins.append((first, path))
        if twins:
            first, path = twins[0]
            warnings.warn(
                f"{len(twins)} image file(s) of {category} have the same name as another file in their folder "
                f"(first: {path.name} beside {first.name} in {path.parent}); both are used, so a converted copy "
                "counts twice: remove the copies.",
                stacklevel=3,
            )
        dark = (self.images.flatten(1).amax(dim=1) <= 1).nonzero().flatten().tolist() if len(self) else []
        if dark:
            warnings.warn(
                f"{len(dark)} of the {len(self)} {self.split} images of {category} are almost black (every pixel "
                f"<= 1 of 255; first: {self.paths[dark[0]]}); 16- and 32-bit integer images are read on the "
                "16-bit scale (65535 = white), so 8-bit values saved in such a file look black: save those as "
                "8-bit PNG files.",
                stacklevel=3,
            )

    def masks_at(self, size: ImageSize | str) -> torch.Tensor | list[np.ndarray]:
        """The ground truth at an evaluation resolution, read from the mask files again (not
        upsampled from ``masks``, which would lose thin defects): uint8 (N, H, W) in {0, 1} for
        S or (H, W) (nearest resize), or for ``size="original"`` a list of (H_i, W_i) uint8
        arrays at each image's own size. Good images (and defective ones without a mask) are
        all zeros. Decoded masks are kept in the process's memory cache.
        """
        if size != "original":
            size = canonical_size(size, what="an evaluation size")
            if min(image_hw(size)) < 1:
                raise ConfigError(f"an evaluation size must be positive, got {size_label(size)}.")
        if size == self.image_size:
            return self.masks
        target = None if size == "original" else size

        def read(path: Path) -> np.ndarray:
            key = ("mask", target if target is not None else 0, 0) + _identity(path)
            hit = _memory_get(key) if self._memory_cache else None
            if hit is None:
                hit = _decode_mask(path, target)
                if self._memory_cache:
                    _memory_put(key, hit)
            return hit[0]

        paths = [p for p in self.mask_paths if p is not None]
        with ThreadPoolExecutor(max(1, min(self._workers, len(paths)))) as pool:
            decoded = dict(zip(paths, pool.map(read, paths)))
        out = []
        for path, (width, height) in zip(self.mask_paths, self.original_sizes):
            shape = (height, width) if target is None else image_hw(target)
            out.append(decoded[path] if path is not None else np.zeros(shape, dtype=np.uint8))
        if target is None:
            return out
        return torch.from_numpy(np.stack(out)) if out else torch.zeros((0, *image_hw(target)), dtype=torch.uint8)

    # ----------------------------------------------------------------- helpers

    def _test_files(self, folder: Path):
        """(images, labels, defect types, masks, hints) of test/: hints are the warning texts of
        mask files found beside the images and of masks that match no image."""
        test = folder / "test"
        subdirs = _test_subdirs(folder)
        if not any(p.name == "good" for p in subdirs):
            for sub in subdirs:
                if _folded(sub.name) in GOOD_FOLDER_NAMES:
                    # Read as a defect type, its defect-free images would all count as defective.
                    raise DatasetError(
                        f"test folder {sub} would be read as a defect type, but its name says defect-free images "
                        "and test/ has no good/ folder; rename it to good."
                    )
        gt = folder / "ground_truth"
        gt_dirs = sorted(p for p in gt.iterdir() if p.is_dir() and _visible(p)) if gt.is_dir() else []
        images, labels, defects, masks = [], [], [], []
        used: set[Path] = set()  # mask files some image uses
        beside_masks: list[Path] = []  # mask files in test/<defect>/ (never test images)
        orphans: list[Path] = []  # ... of them, those with no image of their name
        for sub in subdirs:
            good = sub.name == "good"
            files = _image_files(sub)
            # Masks copied next to their images are masks, never test images (each would count
            # as one more defective image); they serve as masks when ground_truth/ has none.
            beside = [f for f in files if _is_mask_name(f)]
            beside_masks += beside
            beside_index = _mask_index(beside)
            own = next((p for p in gt_dirs if p.name == sub.name), None) or next(
                (p for p in gt_dirs if p.name.casefold() == sub.name.casefold()), None
            )
            index = {} if good or own is None else _mask_index(_image_files(own))
            stems = set()
            for path in files:
                if _is_mask_name(path):
                    continue
                stem = path.stem.casefold()
                stems.add(stem)
                mask = None if good else (index.get(stem) or beside_index.get(stem))
                if mask is not None:
                    used.add(mask)
                images.append(path)
                labels.append(0 if good else 1)
                defects.append(sub.name)
                masks.append(mask)
            orphans += [f for f in beside if _image_stem(f) not in stems]
        if not images:
            raise DatasetError(
                f"no test images in {test} (expected test/good/ and test/<defect>/ folders of images); add some."
            )
        hints = {}
        if beside_masks:
            n_used = sum(1 for f in beside_masks if f in used)
            parts = [f"{n_used} used as masks, not as test images"] if n_used else []
            if orphans:
                parts.append(f"{len(orphans)} with no image of their name ignored (first: {orphans[0]})")
            if len(beside_masks) - n_used - len(orphans):
                parts.append(f"{len(beside_masks) - n_used - len(orphans)} not needed (good images, or "
                             "ground_truth/ holds the mask) ignored")
            hints["beside"] = (
                f"{len(beside_masks)} mask file{'s' if len(beside_masks) > 1 else ''} found beside the images in "
                f"{test} (first: {beside_masks[0]}); "
                + "; ".join(parts) + "."
            )
        if any(m is None for m, label in zip(masks, labels) if label):
            unmatched = [f for d in gt_dirs if d.name != "good" for f in _image_files(d) if f not in used]
            if unmatched:
                hints["unmatched"] = (
                    f"{len(unmatched)} mask file{'s' if len(unmatched) > 1 else ''} in ground_truth/ "
                    f"match{'' if len(unmatched) > 1 else 'es'} no test image (first: {unmatched[0]}): "
                    "the mask of test/<defect>/<name>.png must be ground_truth/<defect>/<name>_mask.png"
                )
            if not gt.is_dir():
                near = sorted(p.name for p in folder.iterdir() if p.is_dir() and _folded(p.name) in MASK_FOLDER_NAMES)
                if near:
                    hints["folder"] = f"the masks may be in {near[0]!r}: name that folder ground_truth"
        return images, labels, defects, masks, hints

    def _n_val(self, n: int) -> int:
        """How many of ``n`` train/good images are held out as val."""
        if self.val_fraction > 0 and n >= 2:
            return min(max(int(round(self.val_fraction * n)), 1), n - 1)  # both splits non-empty whenever possible
        return 0

    def _select(self, n: int) -> list[int]:
        """Indices of this split within train/good: a seeded, disjoint hold-out for val."""
        n_val = self._n_val(n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        val = sorted(order[:n_val])
        return val if self.split == "val" else sorted(order[n_val:])

    def _decode_all(self, folder: Path, group: str, images: list[Path], masks: list[Path]) -> dict:
        """{(kind, path): (array, original_size)} for every file, decoding only what no cache holds."""
        s, c = self.image_size, self.in_channels
        jobs = [("image", p) for p in images] + [("mask", p) for p in masks]
        try:
            ids = {job: _identity(job[1]) for job in jobs}
        except OSError as e:
            raise DatasetError(f"cannot read {e.filename} ({e.strerror}); check the file's permissions.") from None

        def key(job):  # masks do not depend on the channel count
            return (job[0], s, c if job[0] == "image" else 0) + ids[job]

        disk_file = disk = None
        if self._cache_dir is not None:
            disk_file = _disk_cache_file(self._cache_dir, folder, group, s, c)
            disk = _disk_load(disk_file)
        out, todo = {}, []
        for job in jobs:
            hit = _memory_get(key(job)) if self._memory_cache else None
            if hit is None and disk is not None:
                hit = disk.get((job[0],) + ids[job])
            if hit is None:
                todo.append(job)
            else:
                out[job] = hit

        def decode(job):
            kind, path = job
            return _decode_image(path, s, c) if kind == "image" else _decode_mask(path, s)

        if todo:
            if self._workers > 1 and len(todo) > 1:
                with ThreadPoolExecutor(self._workers) as pool:
                    results = list(pool.map(decode, todo))
            else:
                results = [decode(job) for job in todo]
            out.update(zip(todo, results))
        if self._memory_cache:
            for job, value in out.items():
                _memory_put(key(job), value)
        if disk_file is not None and todo:
            # The group's current files only: entries of deleted or changed files are dropped.
            current = {(j[0],) + ids[j]: out[j] for j in jobs}
            _disk_save(disk_file, current)
        return out

    # ----------------------------------------------------------------- Dataset protocol

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i].float() / 255.0,  # (C, H, W) in [0, 1]
            "mask": self.masks[i].float(),  # (H, W) in {0, 1}
            "label": int(self.labels[i]),
            "defect_type": self.defect_types[i],
            "path": self.paths[i],
        }

    def __repr__(self) -> str:
        counts = {d: self.defect_types.count(d) for d in dict.fromkeys(self.defect_types)}
        return (
            f"MVTecAD({self.category!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={size_label(self.image_size)}, in_channels={self.in_channels}, counts={counts}, "
            f"has_masks={self.has_masks})"
        )
