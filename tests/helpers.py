"""Tiny datasets in MVTec layout, written into a test's tmp_path (the suite never reads real data).

    from helpers import make_tiny_mvtec
    root = make_tiny_mvtec(tmp_path, categories=("widget", "fabric"), size=32)
    ds = models.MVTecAD(root, "widget", "test", image_size=32)

Normal images are a smooth random pattern plus noise; a defective image is a normal one
with a bright (or dark) square where its mask is 1, so even a one-epoch model sees it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# Tiny widths: the grid tests check plumbing, not accuracy.
TINY = {
    "cae": {"widths": (8, 16), "latent_dim": 16},
    "vae": {"widths": (8, 16), "latent_dim": 16},
    "vit_vae": {"patch_size": 8, "dim": 16, "depth": 1, "decoder_depth": 1, "heads": 2, "latent_dim": 4},
    "vae_grf": {"widths": (8, 16), "latent_channels": 4},
}
TRAIN = TrainConfig(min_steps=0, epochs=1, batch_size=4, progress=False, num_threads=1)
# The command line's spelling of tiny models: the CAE's alone, and the CAE's, VAE's and ViT-VAE's.
TINY_CAE_SET = ["--set", "cae.widths=[8,16]", "--set", "cae.latent_dim=16"]
TINY_SET = [*TINY_CAE_SET, "--set", "vae.widths=[8,16]", "--set", "vae.latent_dim=16",
            "--set", "vit_vae.patch_size=8", "--set", "vit_vae.dim=16", "--set", "vit_vae.depth=1",
            "--set", "vit_vae.heads=2"]


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


def wide_root(tmp_path, size=(80, 32)):
    """A category 'strip' of 2.5:1 images (width x height 80 x 32) and a square one 'tile'."""
    make_tiny_mvtec(tmp_path / "data", categories=("strip",), size=size, gray_categories=())
    return make_tiny_mvtec(tmp_path / "data", categories=("tile",), size=32, gray_categories=(), seed=1)


def tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, as relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def fake_ds(n=10, size=32, seed=0, category="widget"):
    """A stand-in for a split: ``n`` random uint8 RGB images of ``size`` px, for ``train.fit``."""
    from types import SimpleNamespace

    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return SimpleNamespace(images=images, category=category)


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


def spawn_pipeline(args, *, env=None, code=None, epoch_sleep: float = 0) -> subprocess.Popen:
    """A real `python -m pipeline ARGS` process (or `python -c CODE ARGS`), text pipes, 1 thread, the
    repository on its path and the default signal dispositions; with ``epoch_sleep`` each training
    epoch sleeps that long (SLOW_EPOCHS_CLI)."""
    if epoch_sleep:
        code, args = SLOW_EPOCHS_CLI, [str(epoch_sleep), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "pipeline", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)


def wait_for_line(proc: subprocess.Popen, prefix: str, what: str) -> None:
    """Read ``proc``'s stdout up to a line starting with ``prefix`` (e.g. a job announcing
    itself); fail the test, with the process's stderr, if it ends first (``what`` never happened)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    pytest.fail(f"{what}: {proc.stderr.read()}")


def _default_signals():
    """Give the child the default SIGINT, SIGTERM and SIGHUP dispositions. A test run started in
    the background of a non-interactive shell (CI, nohup) inherits SIGINT (and under nohup SIGHUP)
    *ignored*, and Python then installs no KeyboardInterrupt handler, so a real Ctrl-C would never
    reach the code under test."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run_args(root, csv, tmp, *extra, categories=("widget",), models=None):
    """A `run` command line of the tiny models (TINY_SET) on ``categories`` at 32 px, 1 epoch, batch 4,
    1 thread, checkpoints in tmp/ck; every model unless ``models`` (or a --models in ``extra``) names some."""
    return ["run", "--data-root", str(root), "--categories", *categories, *(["--models", *models] if models else []),
            "--image-size", "32", "--epochs", "1", "--min-steps", "0", "--batch-size", "4", "--results-csv", str(csv),
            "--checkpoint-dir", str(tmp / "ck"), "--no-progress", "--num-threads", "1", *TINY_SET, *extra]


def cae_run_args(root, tmp, *extra):
    """A `run` command line of the CAE at its default widths (what memory estimates and BatchNorm at
    16 px are about) on every category of ``root``, 32 px, 1 epoch, batch 4; tmp/r.csv, tmp/ck."""
    return ["run", "--data-root", str(root), "--models", "cae", "--epochs", "1", "--min-steps", "0",
            "--image-size", "32", "--batch-size", "4", "--results-csv", str(tmp / "r.csv"),
            "--checkpoint-dir", str(tmp / "ck"), "--no-progress", "--num-threads", "1", *extra]


def one_error_line(err: str) -> str:
    """stderr of a refused command: exactly one line, 'error: ...', no traceback."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def refused(capsys, tmp_path) -> str:
    """The one sentence of a refusal of ``cae_run_args``; nothing was written."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(".")
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "ck").exists()
    return err


def dataset_error(fn, *words) -> str:
    """Call ``fn``, expect a one-line DatasetError holding every one of ``words``; its message."""
    with pytest.raises(DatasetError) as info:
        fn()
    msg = str(info.value)
    for w in words:
        assert str(w) in msg, f"{w!r} not in {msg!r}"
    assert "\n" not in msg
    return msg


def fake_row(**kw) -> dict:
    """A complete results row without training (for CSV tests)."""
    import json

    import pipeline.results

    row = {c: "" for c in pipeline.results.COLUMNS + pipeline.results.EXTRA_COLUMNS}
    row.update(dataset="d", category="widget", category_type="custom", model="cae", image_auroc=0.75,
               pixel_auroc=0.5, aupro=0.25, f1=0.5, precision=0.5, recall=0.5, f1_max=0.8, threshold=0.1,
               threshold_rule="val_max", score="mean", epochs=1, image_size=32, seed=0, train_seconds=1.0,
               infer_ms_per_image=1.0, params=10, config_hash="h0", config_json=json.dumps({"a": [1, "x,y"]}))
    row.update(kw)
    return row


def other_runs_files(spec, csv, checkpoint_dir) -> dict:
    """Play another run of the same job that finished first: it wrote its checkpoint, side files
    and row. Returns {path: bytes} of its files, which must be left as they are."""
    import pipeline.runs
    from pipeline.results import KEY_COLUMNS, append_row

    folder = pipeline.runs.runs_dir(csv)
    where = dict(dataset=spec.dataset, category=spec.category, model=spec.model)
    files = {spec.checkpoint_path(checkpoint_dir): b"their checkpoint",
             pipeline.runs.scores_path(folder, **where, config_hash=spec.config_hash()): b"their scores",
             pipeline.runs.curves_path(folder, **where, train_hash=spec.train_hash()): b"their curves"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    append_row(csv, fake_row(**dict(zip(KEY_COLUMNS, spec.key())), train_hash=spec.train_hash(),
                             finished_at="theirs"))
    return files


def tiny_grid(root, csv, tmp, **kw):
    """A silent 1-epoch grid of the TINY models (all four unless ``models``) on 'widget' at 32 px,
    checkpoints in tmp/ck; its rows."""
    kw = {"categories": ["widget"], "models": list(TINY), "image_size": 32, "train": TRAIN,
          "model_overrides": TINY, "checkpoint_dir": tmp / "ck", "log": lambda m: None, **kw}
    return run_grid(root, kw.pop("categories"), kw.pop("models"), results_csv=csv, **kw)


def grid_with_log(root, csv, ckpt, **kw):
    """A 1-epoch grid of the tiny CAE (unless ``models``) on 'widget' at 32 px, checkpoints in
    ``ckpt``; its rows and what it logged, as one text."""
    kw = {"categories": ["widget"], "models": ["cae"], "image_size": 32, "train": TRAIN, "model_overrides": TINY,
          "checkpoint_dir": ckpt, **kw}
    logs = []
    df = run_grid(root, kw.pop("categories"), kw.pop("models"), results_csv=csv, log=logs.append, **kw)
    return df, "\n".join(logs)


def run_grid(data_root, categories=None, models=None, **kw):
    """``grid.run_grid`` with the fields of ``GridConfig`` and ``Settings`` as keywords, each
    put in the dataclass it belongs to (the tests' shorthand for the two)."""
    from pipeline import grid

    config, settings = _split(grid, kw)
    return grid.run_grid(grid.GridConfig(data_root=data_root, categories=categories, models=models, **config),
                         grid.Settings(**settings))


def make_specs(data_root, categories=None, models=None, **kw):
    """``grid.make_specs`` with the fields of ``GridConfig`` as keywords."""
    from pipeline import grid

    return grid.make_specs(grid.GridConfig(data_root=data_root, categories=categories, models=models, **kw))


def _split(grid, kw: dict) -> tuple[dict, dict]:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(grid.GridConfig)}
    config = {k: v for k, v in kw.items() if k in fields}
    # None means the dataclass's default, as the keyword arguments of the old run_grid did.
    config = {k: v for k, v in config.items() if v is not None or k in ("categories", "models", "seeds")}
    return config, {k: v for k, v in kw.items() if k not in fields}


def procedural_images(n: int, size, channels: int):
    """``n`` procedural images (stripes, a blob, in turn) of ``size`` (S or (H, W)), (n, C, H, W) in [0, 1]."""
    import torch

    from models import image_hw

    height, width = image_hw(size)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")  # (H, W) each
    stripes = 0.5 + 0.35 * torch.sin(2 * torch.pi * (5 * xx + 2 * yy))
    blob = 0.25 + 0.6 * torch.exp(-((xx - 0.45) ** 2 + (yy - 0.55) ** 2) / 0.05)
    base = [stripes, blob]
    imgs = torch.stack([base[i % 2] for i in range(n)])[:, None]  # (n, 1, H, W)
    return imgs.expand(n, channels, height, width).clone()
