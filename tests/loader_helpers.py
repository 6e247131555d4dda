"""Helpers of the loader's tests (tests/test_mvtec_*.py): a split loaded with its warnings, and the
changes a user makes to a tiny category by accident (masks rewritten, moved beside the images).

    from loader_helpers import load, reference
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

import models
from helpers import make_tiny_mvtec


def load(root, category="widget", split="test", **kw):
    """(dataset, [warning texts]) with every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = models.MVTecAD(root, category, split, image_size=kw.pop("image_size", 32), **kw)
    return ds, [str(w.message) for w in caught]


def reference(tmp_path, name="ref", **kw):
    """The same tiny category written the usual way (8-bit 0/255 masks in ground_truth/), and its test split."""
    root = make_tiny_mvtec(tmp_path / name, categories=("widget",), **kw)
    ds, _ = load(root)
    return root, ds


def good_folder(root: Path, cat: str = "odd") -> Path:
    """An empty ``<root>/<cat>/train/good`` folder."""
    folder = root / cat / "train" / "good"
    folder.mkdir(parents=True)
    return folder


def mask_files(root, category="widget") -> list[Path]:
    return sorted((Path(root) / category / "ground_truth").rglob("*_mask.png"))


def rewrite_masks(root, fn, category="widget", suffix=".png") -> None:
    """Replace every mask of ``category`` by ``fn(0/255 uint8 array)`` saved with ``suffix``."""
    for f in mask_files(root, category):
        a = np.asarray(Image.open(f))
        f.unlink()
        fn(a).save(f.with_suffix(suffix))


def sixteen_bit(a):
    """A 0/255 mask as a 16-bit 0/1 image."""
    return Image.fromarray((a > 0).astype(np.uint16))


def masks_beside_images(root, category="widget") -> None:
    """What a user does by accident: the masks copied into test/<defect>/, no ground_truth/."""
    cat = Path(root) / category
    for f in mask_files(root, category):
        shutil.move(f, cat / "test" / f.parent.name / f.name)
    shutil.rmtree(cat / "ground_truth")
