"""Tiny datasets in MVTec layout, written into a test's tmp_path (the suite never reads real data).

    from helpers import make_tiny_mvtec
    root = make_tiny_mvtec(tmp_path, categories=("widget", "fabric"), size=32)
    ds = models.MVTecAD(root, "widget", "test", image_size=32)

Normal images are a smooth random pattern plus noise; a defective image is a normal one
with a bright (or dark) square where its mask is 1, so even a one-epoch model sees it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError


def _normal(rng, size: int, gray: bool) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (2 * x + phase[:, None, None])) * np.cos(2 * np.pi * y)  # (3, S, S)
    img = base.transpose(1, 2, 0) + rng.normal(0, 0.02, (size, size, 3))  # (S, S, 3)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return img.mean(axis=2).astype(np.uint8) if gray else img


def make_tiny_mvtec(
    root,
    categories=("widget", "fabric"),  # names of the category folders to write
    size: int = 32,  # px; an int for square images or a (width, height) tuple
    n_train: int = 8,  # train/good images per category
    n_test_good: int = 2,  # test/good images per category
    defects=("scratch", "hole"),  # defect type folders under test/ (and ground_truth/)
    n_per_defect: int = 2,  # images per defect type, each with a <stem>_mask.png
    gray_categories=("fabric",),  # categories saved as 8-bit grayscale ("L"); the others RGB
    masks: bool = True,  # False: no ground_truth/ folder (image-level labels only)
    seed: int = 0,
) -> Path:
    """Write a small MVTec-style dataset under ``root`` and return ``root`` (as a Path)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    side = max(w, h)
    for cat in categories:
        gray = cat in gray_categories
        cat_dir = root / cat

        def save(a: np.ndarray, path: Path) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).resize((w, h)).save(path)

        for i in range(n_train):
            save(_normal(rng, side, gray), cat_dir / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            save(_normal(rng, side, gray), cat_dir / "test" / "good" / f"{i:03d}.png")
        for d_i, defect in enumerate(defects):
            for i in range(n_per_defect):
                img = _normal(rng, side, gray)
                mask = np.zeros((side, side), np.uint8)
                q = max(side // 4, 2)
                y0, x0 = rng.integers(0, side - q, 2)
                mask[y0 : y0 + q, x0 : x0 + q] = 255
                img[mask > 0] = 250 if d_i % 2 == 0 else 5
                save(img, cat_dir / "test" / defect / f"{i:03d}.png")
                if masks:
                    path = cat_dir / "ground_truth" / defect / f"{i:03d}_mask.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).resize((w, h), Image.NEAREST).save(path)
    return root


# A `python -c` program that runs the command line with every training epoch slowed down:
# ``[sys.executable, "-c", SLOW_EPOCHS_CLI, SECONDS, *cli_args]``. A test that must kill or
# interrupt a run while a job is certainly mid-training uses it (train.fit's on_epoch hook).
SLOW_EPOCHS_CLI = """
import sys, time
import pipeline.job
from pipeline.__main__ import main

fit, seconds = pipeline.job.fit, float(sys.argv[1])

def slow_fit(*args, **kwargs):
    kwargs["on_epoch"] = lambda epoch, history: time.sleep(seconds)
    return fit(*args, **kwargs)

pipeline.job.fit = slow_fit
sys.exit(main(sys.argv[2:]))
"""


def dataset_error(fn, *words) -> str:
    """Call ``fn``, expect a one-line DatasetError holding every one of ``words``; its message."""
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert str(w) in msg, f"{w!r} not in {msg!r}"
    assert "\n" not in msg
    return msg
