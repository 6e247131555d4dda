"""Finding the files of a category in the MVTec AD layout, without reading them.

Folder and file names are matched tolerantly (any letter case of an extension or a mask name,
masks left beside their images, every format Pillow decodes), links are followed within the
data root and refused when they lead out of it, loop or lead nowhere, and what is odd is
recorded as a sentence for the loader to warn or refuse with. ``list_files`` is the one
listing: the dataset (``models.mvtec.dataset``) reads, and the data fingerprint
(``pipeline.fingerprint``) hashes, exactly the files it lists.
"""
from __future__ import annotations

import errno
import json
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile

from ..errors import DatasetError

# Formats Pillow lists but cannot decode into pixels: stubs (BUFR, GRIB, HDF5, WMF need handlers
# registered by the user), EPS (vector, needs Ghostscript), MPEG (video: Pillow reads its header only).
UNDECODED_FORMATS = ("EPS", "MPEG")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
MARKER_FILE = "DATASET.json"  # written by pipeline/demo_data.py at the root of the demo dataset
# Folder names that mean "defect-free" (in test/) or "the masks" (next to test/), compared casefolded
# without spaces, "-" and "_": a test/ folder so named is not a defect type, and masks in such a
# folder are missed, both silently, unless said.
GOOD_FOLDER_NAMES = ("good", "ok", "normal", "nominal", "defectfree", "nodefect", "nodefects")
MASK_FOLDER_NAMES = ("groundtruth", "gt", "mask", "masks", "groundtruths", "annotations", "labels")
# A data root folder named so (any case, with or without "-", "_" or spaces) is MVTec AD: its
# archive's and the README's name, mvtec_anomaly_detection, and the usual short ones.
MVTEC_FOLDER_NAMES = ("mvtec", "mvtecad", "mvtecanomalydetection")
MAX_DATASET_NAME = 200  # characters of a name given in a DATASET.json

_HOW_TO_GET_DATA = (
    "put MVTec AD in ./mvtec_anomaly_detection or pass --data-root DIR, "
    "or write the built-in demo dataset with `python -m pipeline demo-data --out data/demo` and use that"
)


# --------------------------------------------------------------------------- names


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


def _is_mask_name(path: Path) -> bool:
    return path.stem.casefold().endswith("_mask")


def _image_stem(mask: Path) -> str:
    """The casefolded stem of the image a mask file belongs to: ``000_MASK.png`` and ``000.png`` -> ``000``."""
    stem = mask.stem.casefold()
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


# --------------------------------------------------------------------------- files of a folder


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


def _mask_index(files: list[Path]) -> dict[str, Path]:
    """{casefolded image stem: its mask} for the mask files given. ``<stem>_mask.*`` comes before
    ``<stem>.*`` and ``.png`` before other extensions, as in MVTec AD; letter case is ignored
    (``000_MASK.PNG``), since masks exported by other tools often differ in case only."""
    ranked = sorted(files, key=lambda f: (not _is_mask_name(f), f.suffix.lower() != ".png", f.name))
    index: dict[str, Path] = {}
    for f in ranked:
        index.setdefault(_image_stem(f), f)
    return index


# --------------------------------------------------------------------------- the data root


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


# --------------------------------------------------------------------------- test/ and its masks


@dataclass
class _TestListing:
    """What listing test/ finds: each test image (test/good first, then the defect types by
    name) with its label, defect type and mask, and the warning texts about the masks."""

    images: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # 0 good, 1 defective
    defects: list[str] = field(default_factory=list)  # the name of the image's folder
    masks: list = field(default_factory=list)  # the mask file of each image, or None
    hints: dict[str, str] = field(default_factory=dict)  # "beside", "unmatched", "folder": warning texts


@dataclass
class _MaskUse:
    """Which mask files the test images use, and those found beside the images."""

    used: set[Path] = field(default_factory=set)  # mask files some image uses
    beside: list[Path] = field(default_factory=list)  # mask files in test/<defect>/ (never test images)
    orphans: list[Path] = field(default_factory=list)  # ... of them, those with no image of their name


def _test_subdirs(folder: Path) -> list[Path]:
    """The folders of ``<category>/test/``: ``good`` first, then the defect types by name."""
    test = folder / "test"
    subdirs = [p for p in test.iterdir() if p.is_dir() and _visible(p)] if test.is_dir() else []
    return sorted(subdirs, key=lambda p: (p.name != "good", p.name))


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


def _ground_truth_index(sub: Path, gt_dirs: list[Path], found: _Found) -> dict[str, Path]:
    """The masks of ground_truth/<defect> for the test folder ``sub`` (its exact name first, else
    the name in any letter case); none for test/good."""
    own = next((p for p in gt_dirs if p.name == sub.name), None) or next(
        (p for p in gt_dirs if p.name.casefold() == sub.name.casefold()), None
    )
    return {} if sub.name == "good" or own is None else _mask_index(_image_files(own, found))


def _list_test_folder(sub: Path, gt_dirs: list[Path], found: _Found, listing: _TestListing, use: _MaskUse) -> None:
    """Add the images of the test folder ``sub`` to ``listing``, each with its mask."""
    good = sub.name == "good"
    files = _image_files(sub, found)
    # Masks copied next to their images are masks, never test images (each would count
    # as one more defective image); they serve as masks when ground_truth/ has none.
    beside = [f for f in files if _is_mask_name(f)]
    use.beside += beside
    beside_index = _mask_index(beside)
    index = _ground_truth_index(sub, gt_dirs, found)
    stems = set()
    for path in files:
        if _is_mask_name(path):
            continue
        stem = path.stem.casefold()
        stems.add(stem)
        mask = None if good else (index.get(stem) or beside_index.get(stem))
        if mask is not None:
            use.used.add(mask)
        listing.images.append(path)
        listing.labels.append(0 if good else 1)
        listing.defects.append(sub.name)
        listing.masks.append(mask)
    use.orphans += [f for f in beside if _image_stem(f) not in stems]


def _beside_hint(test: Path, use: _MaskUse) -> str:
    """The warning text for mask files found beside the test images: how many serve as masks."""
    n_used = sum(1 for f in use.beside if f in use.used)
    parts = [f"{n_used} used as masks, not as test images"] if n_used else []
    if use.orphans:
        parts.append(f"{len(use.orphans)} with no image of their name ignored (first: {use.orphans[0]})")
    if len(use.beside) - n_used - len(use.orphans):
        parts.append(f"{len(use.beside) - n_used - len(use.orphans)} not needed (good images, or "
                     "ground_truth/ holds the mask) ignored")
    return (
        f"{len(use.beside)} mask file{'s' if len(use.beside) > 1 else ''} found beside the images in "
        f"{test} (first: {use.beside[0]}); "
        + "; ".join(parts) + "."
    )


def _missing_mask_hints(folder: Path, gt_dirs: list[Path], found: _Found, used: set[Path]) -> dict[str, str]:
    """Why a defective image may have no mask: mask files that match no image ("unmatched"), or
    no ground_truth/ but a folder named like it ("folder")."""
    hints = {}
    unmatched = [f for d in gt_dirs if d.name != "good" for f in _image_files(d, found) if f not in used]
    if unmatched:
        hints["unmatched"] = (
            f"{len(unmatched)} mask file{'s' if len(unmatched) > 1 else ''} in ground_truth/ "
            f"match{'' if len(unmatched) > 1 else 'es'} no test image (first: {unmatched[0]}): "
            "the mask of test/<defect>/<name>.png must be ground_truth/<defect>/<name>_mask.png"
        )
    if not (folder / "ground_truth").is_dir():
        near = sorted(p.name for p in folder.iterdir() if p.is_dir() and _folded(p.name) in MASK_FOLDER_NAMES)
        if near:
            hints["folder"] = f"the masks may be in {near[0]!r}: name that folder ground_truth"
    return hints


def _test_listing(folder: Path, subdirs: list[Path], found: _Found) -> _TestListing:
    """The images of test/ (its folders ``subdirs``) with their labels, defect types, masks and hints."""
    gt = folder / "ground_truth"
    gt_dirs = sorted(p for p in gt.iterdir() if p.is_dir() and _visible(p)) if gt.is_dir() else []
    listing, use = _TestListing(), _MaskUse()
    for sub in subdirs:
        _list_test_folder(sub, gt_dirs, found, listing, use)
    if use.beside:
        listing.hints["beside"] = _beside_hint(folder / "test", use)
    if any(m is None for m, label in zip(listing.masks, listing.labels) if label):
        listing.hints.update(_missing_mask_hints(folder, gt_dirs, found, use.used))
    return listing


# --------------------------------------------------------------------------- a category's files


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

    def raise_refused(self, paths) -> None:
        """DatasetError with the sentence of the first of ``paths`` the loader refuses (a bad link), if any."""
        for path in paths:
            if path in self.refused:
                raise DatasetError(self.refused[path])


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
    test = _test_listing(folder, subdirs, found)
    return CategoryFiles(folder=folder, train=train, test=test.images, labels=test.labels, defects=test.defects,
                         masks=test.masks, hints=test.hints, refused=found.refused, skipped=found.skipped,
                         test_problem=_misnamed_good_folder(subdirs))


# --------------------------------------------------------------------------- image sizes from headers


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
    listing.raise_refused(files)
    out = []
    for path in files:
        try:
            with Image.open(path) as im:  # the header only
                width, height = im.size
                quarter_turn = _header_orientation(im) in (5, 6, 7, 8)  # EXIF orientation, as decode.open_image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"cannot read the size of image {path} ({e}); replace or remove the file.") from None
        out.append((height, width) if quarter_turn else (width, height))
    return out
