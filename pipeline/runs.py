"""Side files of a results CSV: what a row's numbers were computed from, too big for a cell.

Next to ``results.csv`` lies ``results.runs/`` (``runs_dir``), one folder per dataset and
category, holding:

- ``<model>-<config_hash>.scores.npz`` per row: the test labels, image scores, val scores and
  per-image pixel histograms (``stats.pixel_histograms``) -- what the paired bootstrap of
  ``stats`` resamples, so verdicts between models are computed, never written by hand;
- ``<model>-<train_hash>.curves.json`` per trained model: train and val loss and each loss
  term per epoch (the training curves figure); the checkpoint keeps the same history;
- ``data-<fingerprint>.json`` per category version: its files' content hashes, so a rerun
  after the data changed can say which files differ.

They travel with the CSV (the committed results include them), so the notebook's summary
and figures work on a machine without the checkpoints. Each is written atomically before
its row is appended: a row in the CSV implies its side files exist (unless deleted by hand;
readers then skip that row and say so). Deleting the folder loses only the bootstrap and
the curves of the rows already written.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoints import safe_name
from .files import atomic_write
from .results import results_path
from .stats import RunScores


def runs_dir(csv) -> Path:
    """The side-file folder of the results CSV ``csv``: ``x.csv`` -> ``x.runs/`` beside it (beside
    the real file when ``csv`` is a symbolic link, where its rows are: ``results.results_path``)."""
    csv = results_path(csv)
    return csv.with_name(f"{csv.stem}.runs")


def _folder(runs: Path, dataset: str, category: str) -> Path:
    return Path(runs) / safe_name(dataset) / safe_name(category)


def scores_path(runs, *, dataset: str, category: str, model: str, config_hash: str) -> Path:
    return _folder(runs, dataset, category) / f"{model}-{config_hash}.scores.npz"


def curves_path(runs, *, dataset: str, category: str, model: str, train_hash: str) -> Path:
    return _folder(runs, dataset, category) / f"{model}-{train_hash}.curves.json"


def manifest_path(runs, *, dataset: str, category: str, fingerprint: str) -> Path:
    return _folder(runs, dataset, category) / f"data-{fingerprint}.json"


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path


# ------------------------------------------------------------------ per-image scores


def save_scores(path, *, labels, test_scores, val_scores, pixel_pos=None, pixel_neg=None, test_paths=()) -> Path:
    """The per-image data of one row (compressed npz, written atomically)."""
    arrays = {
        "labels": np.asarray(labels, dtype=np.int8),
        "test_scores": np.asarray(test_scores, dtype=np.float32),
        "val_scores": np.asarray(val_scores, dtype=np.float32),
        "test_paths": np.asarray(list(test_paths), dtype=str),  # relative, to check two runs scored the same images
    }
    if pixel_pos is not None:
        # Counts per bin fit in uint32 for any image under 4 G pixels.
        arrays["pixel_pos"] = np.asarray(pixel_pos, dtype=np.uint32)
        arrays["pixel_neg"] = np.asarray(pixel_neg, dtype=np.uint32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return _write_bytes(Path(path), buf.getvalue())


def load_scores(path) -> RunScores:
    """A row's per-image test data as ``stats.RunScores``."""
    with np.load(path, allow_pickle=False) as z:
        return RunScores(labels=z["labels"], scores=z["test_scores"], pixel_pos=z.get("pixel_pos"),
                         pixel_neg=z.get("pixel_neg"))  # RunScores makes them int64 / float64


def read_runs(rows: pd.DataFrame, csv) -> tuple[dict, list[str]]:
    """{(model, category, seed): RunScores} of the ``rows`` whose side file exists, and the
    descriptions of the rows that have none (rows of an older version, or a deleted folder)."""
    runs, missing = {}, []
    folder = runs_dir(csv)
    for _, row in rows.iterrows():
        path = scores_path(folder, dataset=row["dataset"], category=row["category"], model=row["model"],
                           config_hash=row["config_hash"])
        if path.is_file():
            runs[(row["model"], row["category"], int(row["seed"]))] = load_scores(path)
        else:
            missing.append(f"{row['model']} on {row['category']} (seed {row['seed']})")
    return runs, missing


# ------------------------------------------------------------------ training curves


def _finite_or_none(values) -> list:
    return [None if v is None or not math.isfinite(v) else float(v) for v in values]


def save_curves(path, history: dict) -> Path:
    """Train / val loss and each loss term per epoch of a training ``history`` (``train.fit``), as JSON."""
    curves = {
        "epoch": list(range(1, len(history["train_loss"]) + 1)),
        "train_loss": _finite_or_none(history["train_loss"]),
        "val_loss": _finite_or_none(history["val_loss"]),
        "terms": {k: _finite_or_none(v) for k, v in history.get("term_curves", {}).items() if k != "loss"},
    }
    return _write_bytes(Path(path), json.dumps(curves, indent=1).encode())


def read_curves(rows: pd.DataFrame, csv) -> pd.DataFrame:
    """The training curves of ``rows`` in long format: dataset, category, category_type, model,
    seed, train_hash (the trained model's, which names its curves file), epoch, train_loss,
    val_loss and one column per loss term. Rows without a curves file
    (older versions) are left out; one curve per trained model even if several rows share it."""
    frames, seen = [], set()
    folder = runs_dir(csv)
    for _, row in rows.iterrows():
        train_hash = row.get("train_hash")
        if not isinstance(train_hash, str) or not train_hash or (row["model"], train_hash) in seen:
            continue
        seen.add((row["model"], train_hash))
        path = curves_path(folder, dataset=row["dataset"], category=row["category"], model=row["model"],
                           train_hash=train_hash)
        if not path.is_file():
            continue
        c = json.loads(path.read_text())
        frame = pd.DataFrame({"epoch": c["epoch"], "train_loss": c["train_loss"], "val_loss": c["val_loss"],
                              **c.get("terms", {})}).astype(float)
        frame["epoch"] = frame["epoch"].astype(int)
        for col in ("dataset", "category", "category_type", "model"):
            frame[col] = row[col]
        frame["seed"] = int(row["seed"])
        frame["train_hash"] = train_hash
        frames.append(frame)
    columns = ["dataset", "category", "category_type", "model", "seed", "train_hash", "epoch", "train_loss",
               "val_loss"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out[columns + [c for c in out.columns if c not in columns]]


# ------------------------------------------------------------------ data manifests


def save_manifest(path, files: dict) -> Path:
    """A category's {relative path: content hash} (``fingerprint.DataFingerprint.files``)."""
    return _write_bytes(Path(path), json.dumps(files, indent=0, sort_keys=True).encode())


def load_manifest(path) -> dict | None:
    """The saved manifest, or None if there is none (or it is unreadable: it only improves a message)."""
    try:
        files = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return files if isinstance(files, dict) else None
