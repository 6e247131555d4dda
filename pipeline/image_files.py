"""The files of ``predict``: the images a user names, their heatmaps' names, and where the output may go.

``find_images`` takes files, folders (searched recursively, hidden files and other files left
out) and glob patterns, and returns each image once, sorted. The output folder may not be an
input folder, lie inside one, or be the folder of an input image (``check_output_folder``)
unless the user allows it, and nothing may be written over an input file whatever the options
(``check_no_overwrite``): the user's images are never written to or beside.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

from models.errors import ConfigError, DatasetError
from models.mvtec import IMAGE_EXTENSIONS


def _visible_below(path: Path, folder: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(folder).parts)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _folder_images(folder: Path, skip: Path | None) -> list[Path]:
    """The image files under ``folder`` (recursively; hidden ones and those under ``skip`` left out)."""
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and _visible_below(path, folder):
            if skip is None or not _inside(path.resolve(), skip):
                found.append(path)
    if not found:
        raise DatasetError(f"folder {str(folder)!r} holds no image files (.png, .jpg, .bmp, .tif ...); pass a "
                           "folder of images, or the images themselves.")
    return found


def find_images(inputs, *, skip: Path | None = None) -> list[Path]:
    """The image files that ``inputs`` name (files; folders, recursively; glob patterns), sorted
    and each once. ``skip``: a folder whose files are not inputs (the output folder). A name that
    exists as no file or folder, and a pattern or folder without images, is a DatasetError."""
    found: dict[Path, Path] = {}
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            paths = _folder_images(path, skip)
        elif path.is_file():
            paths = [path]
        elif glob.has_magic(str(text)):
            paths = [Path(p) for p in glob.glob(os.path.expanduser(str(text)), recursive=True) if Path(p).is_file()]
            if not paths:
                raise DatasetError(f"no file matches {str(text)!r}; check the pattern (quote it, so that the "
                                   "program, not the shell, expands it).")
        else:
            raise DatasetError(f"image or folder {str(text)!r} does not exist; check the path.")
        for p in paths:
            found.setdefault(p.resolve(), p)
    if not found:
        raise DatasetError("no images given; pass image files, folders of images or glob patterns.")
    return sorted(found.values(), key=str)


def heatmap_names(images: list[Path]) -> list[Path]:
    """Each image's heatmap path below ``heatmaps/``: its path below the folder the images share,
    with ``.png`` for its extension (``a/001.png``); where two would clash (``001.png``, ``001.jpg``),
    the extension is kept before ``.png`` (``001.jpg.png``)."""
    absolute = [p.absolute() for p in images]
    common = Path(os.path.commonpath([p.parent for p in absolute]))
    relative = [p.relative_to(common) for p in absolute]
    names = [r.with_suffix(".png") for r in relative]
    counts: dict[Path, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [r.with_name(r.name + ".png") if counts[n] > 1 else n for r, n in zip(relative, names)]


def input_folders(inputs) -> list[tuple[Path, str]]:
    """(folder, what it is) of each input: a folder named, or the folder of a file named. The
    output may go into none of them: it would lie among or beside the user's images."""
    folders = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            folders.append((path.resolve(), f"the input folder {str(path)!r}"))
        elif path.is_file():
            folders.append((path.resolve().parent, f"the folder of the input image {str(path)!r}"))
    return folders


def check_output_folder(out: Path, inputs, *, allow_inside: bool = False) -> Path:
    """``out`` resolved; ConfigError if it is an input folder or the folder of an input file, or
    inside one, unless ``allow_inside``."""
    resolved = Path(out).expanduser().resolve()
    for folder, what in input_folders(inputs):
        if _inside(resolved, folder) and not allow_inside:
            where = "is" if resolved == folder else "is inside"
            raise ConfigError(f"the output folder {str(out)!r} {where} {what}; pass an --out outside the images' "
                              "folders (or --allow-inside to write there anyway; the images themselves are never "
                              "written over).")
    return resolved


def check_no_overwrite(images: list[Path], outputs: list[Path]) -> None:
    """ConfigError if an output path is one of the input images (whatever the options)."""
    inputs = {p.resolve() for p in images}
    clash = next((o for o in outputs if o.resolve() in inputs), None)
    if clash is not None:
        raise ConfigError(f"predicting would write {str(clash)!r} over an input image of that name; pass another "
                          "--out.")
