"""A dataset in the MVTec AD layout, decoded once into uint8 tensors.

Layout (Bergmann et al., "MVTec AD", CVPR 2019)::

    <root>/<category>/train/good/*.png            defect-free training images
    <root>/<category>/test/good/*.png             defect-free test images
    <root>/<category>/test/<defect>/*.png         defective test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   their pixel masks

Images and masks may be in any format Pillow decodes (``IMAGE_EXTENSIONS``). A mask may also
be named ``<stem>.<ext>``, in any letter case, bit depth or colour mode (its non-zero pixels,
in any channel, are the defect); one left beside its image as ``test/<defect>/<stem>_mask.*``
is used as the mask, never as a test image. docs/faults.md lists what else is accepted,
warned about or refused.

Any folder in this layout is a category (users bring their own products). ``list_files`` lists
the files the loader reads (the data fingerprint hashes exactly those); only files under the
data root are read (links within it work). Every file is
decoded and resized once at construction, in a thread pool (PIL releases the GIL while it
inflates and resizes), and kept as uint8 tensors: re-decoding 1024-px PNGs every epoch
costs more than the model. Decoded files are also kept in a process-wide memory cache
(train, val and test of several models reuse them) and, with ``cache_dir``, on disk, keyed
by image size, channels and the file's content hash (``models.filehash``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import mimetypes
import os
import threading
import warnings
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy import ndimage

from .base import DEFAULT_IMAGE_SIZE, ImageSize, canonical_size, image_hw, size_label
from .errors import ConfigError, DatasetError
from .filehash import content_hashes

# Formats Pillow lists but cannot decode into pixels: stubs (BUFR, GRIB, HDF5, WMF need handlers
# registered by the user), EPS (vector, needs Ghostscript), MPEG (video: Pillow reads its header only).
UNDECODED_FORMATS = ("EPS", "MPEG")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
MARKER_FILE = "DATASET.json"  # written by pipeline/demo_data.py at the root of the demo dataset
SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # of train/good held out as val (threshold, validation loss)
CACHE_FORMAT = 2  # of the cache_dir files: 2 keys entries by content hash (1 by path, size and mtime)
DECODE_VERSION = 2  # bump when decoding changes: invalidates on-disk caches, and rows and checkpoints (pipeline/job.py)
# Masks are read only for evaluation, so their rule names the row (config_hash), not the checkpoint: a bump
# re-evaluates rows from their checkpoints, never retrains. 2: any non-zero value of any channel, palette
# index or alpha is a defect (1: the mask converted to grey, which lost dark colours and class indices).
MASK_VERSION = 2
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


def _readable_extensions() -> tuple[str, ...]:
    """The file extensions (lower case) of every format this Pillow can decode, e.g. .png, .jpg,
    .webp, .gif, .tif, .bmp, .ppm, .jp2: asked of Pillow, so a format its build adds is read too."""
    extensions = Image.registered_extensions()  # loads every plugin, which fills Image.OPEN
    decodable = {
        name for name, (factory, _) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    } - set(UNDECODED_FORMATS)
    return tuple(sorted(ext for ext, name in extensions.items() if name in decodable))


IMAGE_EXTENSIONS = _readable_extensions()


def _looks_like_an_image(name: str) -> bool:
    """A name the system's MIME types call an image (.heic, .svg, .cr2 ...) that Pillow cannot read."""
    kind = mimetypes.guess_type(name)[0]
    return bool(kind and kind.startswith("image/"))


@dataclass
class _Found:
    """What listing a category's folders finds besides its image files."""

    root: Path  # the data root as given (for the sentences)
    bases: tuple[str, ...]  # real paths every file read must lie under: the data root's and the category's
    refused: dict = field(default_factory=dict)  # Path -> the sentence refusing it (a bad link)
    skipped: list = field(default_factory=list)  # files in an image format Pillow cannot read here


def _inside(real: str, bases: tuple[str, ...]) -> bool:
    return any(real == base or real.startswith(base.rstrip(os.sep) + os.sep) for base in bases)


def _link_problem(path: Path, real_folder: str, found: _Found) -> str | None:
    """Why the loader refuses to read ``path``, or None. Links are followed, but a link whose
    target is gone, that loops, or that leads out of the data root is refused rather than left
    out: a dataset linked from elsewhere whose source moved would lose images silently, and a
    crafted dataset must not make the run read (and hash into its side files) files elsewhere."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"{path} is a symbolic link that loops (it leads back to itself); fix or remove the link."
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return (f"{path} is a broken symbolic link (its target {os.readlink(path)} does not exist); "
                        "fix or remove the link.")
            return None  # e.g. permission denied: reading the file says so
        real = os.path.realpath(path)
    else:
        real = os.path.join(real_folder, path.name)
    if _inside(real, found.bases):
        return None
    return (f"{path} leads to {real}, outside the data root {found.root}; only files under the data root are "
            "read: copy it into the data root (links within the data root work).")


def _image_files(folder: Path, found: _Found) -> list[Path]:
    """Image files of ``folder`` (every format Pillow decodes, any letter case), sorted by name;
    hidden files and other files are left out, those in an image format Pillow cannot read are
    noted in ``found.skipped``. Links the loader refuses are listed, and noted in ``found.refused``."""
    if not folder.is_dir():
        return []
    real_folder = os.path.realpath(folder)
    out = []
    for p in folder.iterdir():
        if not _visible(p):
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            if _looks_like_an_image(p.name) and p.is_file():
                found.skipped.append(p)
            continue
        problem = _link_problem(p, real_folder, found)
        if problem:
            found.refused[p] = problem
            out.append(p)
        elif p.is_file():
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


def _dead_link(path: Path) -> bool:
    """A symbolic link that leads nowhere: its target is gone, or it loops."""
    return path.is_symlink() and not path.exists()


def _is_category(folder: Path) -> bool:
    """Has a train/good folder, or a train or train/good link that leads nowhere: a category whose
    link broke is named as such when it is loaded, never reported as an unknown category."""
    train = folder / "train"
    return (train / "good").is_dir() or _dead_link(train) or _dead_link(train / "good")


def list_categories(root) -> list[str]:
    """Sorted names of the category folders under ``root`` (those with a ``train/good`` folder).

    Raises DatasetError if ``root`` is missing or holds no category, so that callers never
    silently run on nothing.
    """
    root = _check_root(root)
    found = sorted(p.name for p in root.iterdir() if _visible(p) and _is_category(p))
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


# A data root folder named so (any case, with or without "-", "_" or spaces) is MVTec AD: its
# archive's and the README's name, mvtec_anomaly_detection, and the usual short ones.
MVTEC_FOLDER_NAMES = ("mvtec", "mvtecad", "mvtecanomalydetection")
MAX_DATASET_NAME = 200  # characters of a name given in a DATASET.json


def _is_dataset_name(name) -> bool:
    """A name fit to label a dataset (and name folders, once made plain): text that is not only
    dots, with no path separator or control character."""
    return (isinstance(name, str) and name.strip(". ") != "" and len(name) <= MAX_DATASET_NAME
            and all(c.isprintable() and c not in "/\\" for c in name))


def dataset_name(root) -> str:
    """The dataset's readable name, part of every job's key: the "name" of the root's DATASET.json
    ("demo" for the built-in demo; any dataset may be named so), else "mvtec_ad" for a root
    folder named like MVTec AD (``MVTEC_FOLDER_NAMES``), else the root folder's name. Never
    which categories the root holds: adding one must not rename the dataset of the others (and
    retrain all their jobs)."""
    root = Path(root).expanduser()
    marker = _read_marker(root)
    if marker and marker.get("name"):
        name = marker["name"]
        if not _is_dataset_name(name):
            raise DatasetError(
                f"{str(root / MARKER_FILE)!r} names the dataset {name!r}, which is not a plain name; give a name of "
                f"at most {MAX_DATASET_NAME} characters without '/', '\\' or control characters and not only dots, "
                "or delete the file."
            )
        return name
    folder = root.resolve().name
    if "".join(c for c in folder.lower() if c.isalnum()) in MVTEC_FOLDER_NAMES:
        return "mvtec_ad"
    return folder


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
    return folder


def _misnamed_good_folder(subdirs: list[Path]) -> str | None:
    """The sentence refusing test/ (its folders ``subdirs``) when it has no good/ folder but one named
    like it (ok, normal ...): read as a defect type, its defect-free images would all count as defective."""
    if any(p.name == "good" for p in subdirs):
        return None
    for sub in subdirs:
        if _folded(sub.name) in GOOD_FOLDER_NAMES:
            return (f"test folder {sub} would be read as a defect type, but its name says defect-free images "
                    "and test/ has no good/ folder; rename it to good.")
    return None


@dataclass
class CategoryFiles:
    """The files of one category that the loader reads (``list_files``); the data fingerprint
    (``pipeline.fingerprint``) hashes exactly these. Nothing here is decoded or hashed yet."""

    folder: Path  # <root>/<category>
    train: list[Path]  # train/good images
    test: list[Path]  # test images: test/good first, then the defect types by name
    labels: list[int]  # of each test image: 0 good, 1 defective
    defects: list[str]  # of each test image: its folder's name
    masks: list  # of each test image: its mask file, or None (good images, or none found)
    hints: dict[str, str]  # warning texts: mask files beside the images, masks that match no image, ...
    refused: dict[Path, str]  # listed files (or folders) the loader refuses: broken, looping or outside links
    skipped: list[Path]  # files in an image format Pillow cannot read here, left out
    test_problem: str | None  # the sentence refusing test/ as it is laid out (a misnamed good/ folder)

    def paths(self) -> list[Path]:
        """Every file read, each once, sorted: the train/good and test images and the masks used."""
        return sorted({*self.train, *self.test, *(m for m in self.masks if m is not None)})


def _raise_refused(listing: CategoryFiles, paths) -> None:
    """DatasetError with the sentence of the first of ``paths`` the loader refuses (a bad link), if any."""
    for path in paths:
        if path in listing.refused:
            raise DatasetError(listing.refused[path])


def list_files(root, category: str) -> CategoryFiles:
    """The files of ``<root>/<category>`` that the loader reads, without reading them.

    Per-file problems (a broken, looping or outside link; a test/ folder named like good/) are
    recorded, not raised: loading the split they belong to raises them, so a grid fingerprints
    every category and only the faulty one fails. DatasetError if the category folder is missing.
    """
    folder = _category_dir(root, category)
    root = Path(root).expanduser()
    found = _Found(root=root, bases=tuple(dict.fromkeys([os.path.realpath(root), os.path.realpath(folder)])))
    for link in (folder / "train", folder / "train" / "good"):
        if _dead_link(link):
            found.refused[link] = _link_problem(link, "", found)
    train = _image_files(folder / "train" / "good", found)
    subdirs = _test_subdirs(folder)
    test, labels, defects, masks, hints = _test_listing(folder, subdirs, found)
    return CategoryFiles(folder=folder, train=train, test=test, labels=labels, defects=defects, masks=masks,
                         hints=hints, refused=found.refused, skipped=found.skipped,
                         test_problem=_misnamed_good_folder(subdirs))


def _test_listing(folder: Path, subdirs: list[Path], found: _Found):
    """(images, labels, defect types, masks, hints) of test/ (its folders ``subdirs``): hints are the
    warning texts of mask files found beside the images and of masks that match no image."""
    test = folder / "test"
    gt = folder / "ground_truth"
    gt_dirs = sorted(p for p in gt.iterdir() if p.is_dir() and _visible(p)) if gt.is_dir() else []
    images, labels, defects, masks = [], [], [], []
    used: set[Path] = set()  # mask files some image uses
    beside_masks: list[Path] = []  # mask files in test/<defect>/ (never test images)
    orphans: list[Path] = []  # ... of them, those with no image of their name
    for sub in subdirs:
        good = sub.name == "good"
        files = _image_files(sub, found)
        # Masks copied next to their images are masks, never test images (each would count
        # as one more defective image); they serve as masks when ground_truth/ has none.
        beside = [f for f in files if _is_mask_name(f)]
        beside_masks += beside
        beside_index = _mask_index(beside)
        own = next((p for p in gt_dirs if p.name == sub.name), None) or next(
            (p for p in gt_dirs if p.name.casefold() == sub.name.casefold()), None
        )
        index = {} if good or own is None else _mask_index(_image_files(own, found))
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
        unmatched = [f for d in gt_dirs if d.name != "good" for f in _image_files(d, found) if f not in used]
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
    listing = list_files(root, category)
    files = listing.train + listing.test
    _raise_refused(listing, files)
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


def _decode_mask(path: Path, image_size: ImageSize | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 (H, W) mask in {0, 1}, original (width, height)); nearest resize to ``image_size``
    (S or (H, W); none if it is None: the mask at its own size).

    Any non-zero pixel of any plane (``_mask_planes``: colour channel, palette index, alpha) is
    a defect, read on the stored values; antialiased edges are cut at half the plane's maximum
    and masks that are mostly grey are refused (``_marked``).
    """
    im, original_size = _open(path)
    planes = _mask_planes(im, path)
    if len(planes) > 1:  # colour: a channel that stays near black (JPEG noise of a red mask's G and B) marks nothing
        top = max(float(plane.max()) for plane in planes)
        planes = [plane for plane in planes if plane.max() > top / 10] or planes[:1]
    binary = np.logical_or.reduce([_marked(plane, path) for plane in planes])
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


def _file_hashes(paths: list[Path], workers: int) -> dict[Path, str]:
    """{path: SHA-256 of its content} (``models.filehash``, memoised: the data fingerprint's hashes)."""
    try:
        hashes, _ = content_hashes(paths, workers=workers)
    except PermissionError as e:
        raise DatasetError(f"cannot read image {e.filename} (permission denied); check the file's "
                           "permissions.") from None
    except OSError as e:
        raise DatasetError(f"cannot read {e.filename} ({e.strerror}); check the file's permissions.") from None
    return dict(zip(paths, hashes))


def _disk_cache_file(cache_dir: Path, category_dir: Path, group: str, image_size: ImageSize,
                     in_channels: int) -> Path:
    digest = hashlib.sha1(str(category_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{category_dir.name}-{group}-{size_label(image_size)}px-{in_channels}ch-{digest}.pt"


def _disk_load(file: Path) -> dict:
    """{(kind, content hash): (array, original_size)} from a cache file; {} if absent, stale (another
    decode version or cache format: rebuilt without a word) or unreadable (rebuilt with a warning)."""
    if not file.is_file():
        return {}
    try:
        blob = torch.load(file, weights_only=True)
        if (blob.get("version"), blob.get("mask_version"), blob.get("format")) != (DECODE_VERSION, MASK_VERSION,
                                                                                    CACHE_FORMAT):
            return {}
        return {(e["kind"], e["sha256"]): (e["data"].numpy(), tuple(e["original_size"])) for e in blob["entries"]}
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable dataset cache {file} ({e}); it will be rewritten.", stacklevel=3)
        return {}


def _disk_save(file: Path, entries: dict) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves a half cache."""
    file.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "version": DECODE_VERSION,
        "mask_version": MASK_VERSION,
        "format": CACHE_FORMAT,
        "entries": [
            {"kind": k[0], "sha256": k[1],
             "data": torch.from_numpy(np.ascontiguousarray(v[0])), "original_size": list(v[1])}
            for k, v in entries.items()
        ],
    }
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, file)


# --------------------------------------------------------------------------- notes on the files


def _skipped_note(category: str, folder: Path, skipped: list[Path]) -> str | None:
    """The warning for image files left out because Pillow cannot read their format, per folder."""
    if not skipped:
        return None
    counts = Counter(f.parent.relative_to(folder).as_posix() for f in skipped)
    where = ", ".join(f"{n} in {name}" for name, n in sorted(counts.items()))
    return (f"{len(skipped)} image file(s) of {category} are in a format Pillow cannot read and were skipped "
            f"({where}; first: {min(skipped)}); convert them to PNG to use them.")


def _copies_notes(category: str, folder: Path, listing: CategoryFiles, hashes: dict, workers: int) -> dict:
    """The warnings for test images that are byte-identical copies of a training image (a leak)
    or of an image under the other label (good and defective at once): {"leak": text, "both": text},
    each naming the count and the first pair. ``hashes`` holds the test images' content hashes;
    the training images' come from the same memo the data fingerprint fills."""
    def rel(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    train = {}
    for path, content in _file_hashes(listing.train, workers).items():
        train.setdefault(content, path)
    good = {}
    for path, label in zip(listing.test, listing.labels):
        if label == 0:
            good.setdefault(hashes[path], path)
    leaks = [(path, train[hashes[path]]) for path in listing.test if hashes[path] in train]
    both = [(path, good[hashes[path]]) for path, label in zip(listing.test, listing.labels)
            if label == 1 and hashes[path] in good]
    notes = {}
    if leaks:
        (path, copy), n = leaks[0], len(leaks)
        notes["leak"] = (f"{n} test image(s) of {category} are byte-identical to training images (first: "
                         f"{rel(path)} = {rel(copy)}): the model was trained on them, so the test scores are "
                         "better than on new images; remove them from test/ or from train/good.")
    if both:
        (path, copy), n = both[0], len(both)
        notes["both"] = (f"{n} defective test image(s) of {category} are also in test/good (first: {rel(path)} = "
                         f"{rel(copy)}): one image under two labels makes the metrics wrong; keep each image in one "
                         "folder only.")
    return notes


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
        listing = list_files(self.root, category)
        folder = listing.folder
        if split == "test":
            images, labels, defects, masks = listing.test, listing.labels, listing.defects, listing.masks
            _raise_refused(listing, images + [m for m in masks if m is not None])
            if listing.test_problem:
                raise DatasetError(listing.test_problem)
            if not images:
                raise DatasetError(f"no test images in {folder / 'test'} (expected test/good/ and test/<defect>/ "
                                   "folders of images); add some.")
            group = "test"
        else:
            train, good = listing.train, folder / "train" / "good"
            _raise_refused(listing, [folder / "train", good, *train])
            if not good.is_dir():
                raise DatasetError(f"category folder {folder} has no train/good folder of defect-free images; "
                                   "add one.")
            if not train:
                raise DatasetError(f"no training images in {good} (expected image files of defect-free samples, "
                                   "e.g. .png or .jpg, in any format Pillow reads); add some.")
            images, labels, defects, masks = train, [0] * len(train), ["good"] * len(train), [None] * len(train)
            group = "train"
        # What the split was drawn from, so that a too-small train split can say why (pipeline.train.fit).
        self.n_files = len(images)  # image files of train/good (train, val) or of test/
        self.n_val = self._n_val(len(images)) if group == "train" else 0  # of them held out as val

        # Decode everything of this group (train and val share train/good), from the caches when possible.
        decoded, hashes = self._decode_all(folder, group, images, [m for m in masks if m is not None])
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
        hints = dict(listing.hints) if group == "test" else {}
        skipped = [f for f in listing.skipped if (f.parent == folder / "train" / "good") == (group == "train")]
        hints["skipped"] = _skipped_note(category, folder, skipped)  # test's: those of test/ and ground_truth/
        if group == "test":
            hints.update(_copies_notes(category, folder, listing, hashes, self._workers))
        self._warn(folder, images, keep, hints, missing, empty, inverted)

    def _warn(self, folder: Path, images: list[Path], keep: list[int], hints: dict, missing: list, empty: list,
              inverted: list) -> None:
        """One warning per kind of oddity found while loading, each naming a count and the first file."""
        category, n_masks = self.category, sum(1 for p in self.mask_paths if p is not None)
        for kind in ("beside", "skipped", "leak", "both"):
            if hints.get(kind):
                warnings.warn(hints[kind], stacklevel=3)
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

        paths = [p for p in self.mask_paths if p is not None]
        hashes = _file_hashes(paths, self._workers)

        def read(path: Path) -> np.ndarray:
            key = ("mask", target if target is not None else 0, 0, hashes[path])
            hit = _memory_get(key) if self._memory_cache else None
            if hit is None:
                hit = _decode_mask(path, target)
                if self._memory_cache:
                    _memory_put(key, hit)
            return hit[0]

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
        """({(kind, path): (array, original_size)} for every file, {path: content hash}), decoding only
        what no cache holds. The caches are keyed by the file's content (``models.filehash``): a file
        replaced by another of the same size and modification time is decoded again."""
        s, c = self.image_size, self.in_channels
        jobs = [("image", p) for p in images] + [("mask", p) for p in masks]
        hashes = _file_hashes([p for _, p in jobs], self._workers)
        ids = {job: (job[0], hashes[job[1]]) for job in jobs}  # a file's content names it, not its path or mtime

        def key(job):  # masks do not depend on the channel count
            return (job[0], s, c if job[0] == "image" else 0, hashes[job[1]])

        disk_file = disk = None
        if self._cache_dir is not None:
            disk_file = _disk_cache_file(self._cache_dir, folder, group, s, c)
            disk = _disk_load(disk_file)
        out, todo = {}, []
        for job in jobs:
            hit = _memory_get(key(job)) if self._memory_cache else None
            if hit is None and disk is not None:
                hit = disk.get(ids[job])
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
            current = {ids[j]: out[j] for j in jobs}
            _disk_save(disk_file, current)
        return out, hashes

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
