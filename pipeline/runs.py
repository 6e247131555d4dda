"""Side files of a results CSV: what a row's numbers were computed from, too big for a cell.

Next to ``results.csv`` lies ``results.runs/`` (``runs_dir``), one folder per dataset and
category, holding:

- ``<model>-<config_hash>.scores.npz`` per row: the test labels, image scores, val scores and
  per-image pixel histograms (``stats.pixel_histograms``), read back as the row's score set
  (``stats.ScoreSet``) -- what the paired bootstrap of ``stats`` resamples, so verdicts between
  models are computed, never written by hand;
- ``<model>-<train_hash>.curves.json`` per trained model: train and val loss and each loss
  term per epoch (the training curves figure); the checkpoint keeps the same history;
- ``data-<fingerprint>.json`` per category version: its files' content hashes, so a rerun
  after the data changed can say which files differ.

They travel with the CSV (the committed results include them), so the notebook's summary
and figures work on a machine without the checkpoints. Each is written atomically before
its row is appended, under the CSV's lock and only if the row is kept (``job.write_output``):
a row in the CSV implies its side files exist, unless deleted by hand or refused by the disk
(the run then said so); readers skip such a row and say so, and a damaged file (cut short,
overwritten: ``DamagedSideFile`` says why) alike. Deleting the folder loses only
the bootstrap and the curves of the rows already written.
"""
from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import UserError

from .files import atomic_write, plain_name
from .results import ResultsError, runs_dir  # runs_dir: the folder's name, beside the CSV's other neighbours
from .stats import ScoreSet


def _folder(runs: Path, dataset: str, category: str) -> Path:
    """The side-file folder of a category. The names may come from a CSV's cells or a marker file:
    every part is a plain name (``files.plain_name``), so each path stays inside ``runs``."""
    return Path(runs) / plain_name(dataset) / plain_name(category)


def scores_path(runs, *, dataset: str, category: str, model: str, config_hash: str) -> Path:
    return _folder(runs, dataset, category) / f"{plain_name(f'{model}-{config_hash}')}.scores.npz"


def curves_path(runs, *, dataset: str, category: str, model: str, train_hash: str) -> Path:
    return _folder(runs, dataset, category) / f"{plain_name(f'{model}-{train_hash}')}.curves.json"


def manifest_path(runs, *, dataset: str, category: str, fingerprint: str) -> Path:
    return _folder(runs, dataset, category) / f"{plain_name(f'data-{fingerprint}')}.json"


def _write_bytes(path: Path, data: bytes, *, what: str) -> Path:
    """Write ``data`` to ``path`` atomically; a refusal of the file system (disk full, quota,
    read-only) is a ``ResultsError`` naming the file (``what`` it is) and what to do."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(data)
    except OSError as e:  # atomic_write removed its temporary file: no half file is left
        fix = "make the folder writable" if isinstance(e, PermissionError) else "free disk space"
        raise ResultsError(f"cannot write the {what} {str(path)!r} ({e.strerror or e}); {fix} or pass another "
                           "--results-csv.") from None
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
    return _write_bytes(Path(path), buf.getvalue(), what="per-image scores")


class DamagedSideFile(UserError, ValueError):
    """A side file that is not what its writer wrote: cut short, empty, overwritten, other keys or shapes."""


# What a damaged file can raise while read (np.load: BadZipFile, EOFError, ValueError for pickles
# and bad headers, KeyError for missing members, zlib.error for corrupt ones; json: ValueError).
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def load_scores(path) -> ScoreSet:
    """A row's per-image test data as a ``stats.ScoreSet``; ``DamagedSideFile`` (saying why) for a file
    that is not what ``save_scores`` wrote, whatever is wrong with it."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError("not an npz archive")
        with archive:
            arrays = {k: archive[k] for k in ("labels", "test_scores", "pixel_pos", "pixel_neg") if k in archive}
        lacks = [k for k in ("labels", "test_scores") if k not in arrays]
        if lacks:
            raise ValueError(f"it lacks {' and '.join(lacks)}")
        return ScoreSet(labels=arrays["labels"], scores=arrays["test_scores"], pixel_pos=arrays.get("pixel_pos"),
                         pixel_neg=arrays.get("pixel_neg"))  # checks the shapes; makes them int64 / float64
    except READ_ERRORS as e:
        raise _damaged(path, e) from None


def _damaged(path, e: Exception) -> DamagedSideFile:
    """The note that leaves a side file out: its name and the read error in a few words."""
    if isinstance(e, PermissionError):
        return DamagedSideFile(f"{Path(path).name} cannot be read (permission denied)")
    text = str(e).strip().splitlines()[0].split(". ")[0][:120] if str(e).strip() else ""
    why = text or ("the file is empty or cut short" if isinstance(e, EOFError) else type(e).__name__)
    return DamagedSideFile(f"{Path(path).name} is damaged: {why}")


def _seed(row) -> int | None:
    """A row's seed, or None where its cell held no whole number (``results.read_results`` warned)."""
    seed = pd.to_numeric(row.get("seed"), errors="coerce")
    return int(seed) if pd.notna(seed) else None


def read_score_sets(rows: pd.DataFrame, csv) -> tuple[dict, list[str]]:
    """{(model, category, seed): ScoreSet} of the ``rows`` whose side file exists and can be read,
    and the descriptions of the rows left out: without a side file (deleted, or never written),
    with a damaged one (why), or without a seed."""
    score_sets, missing = {}, []
    folder = runs_dir(csv)
    for _, row in rows.iterrows():
        seed = _seed(row)
        path = scores_path(folder, dataset=row["dataset"], category=row["category"], model=row["model"],
                           config_hash=row["config_hash"])
        what = f"{row['model']} on {row['category']} (seed {'?' if seed is None else seed}"
        if seed is None or not path.is_file():
            missing.append(what + ")")
            continue
        try:
            score_sets[(row["model"], row["category"], seed)] = load_scores(path)
        except DamagedSideFile as e:
            missing.append(f"{what}; {e})")
    return score_sets, missing


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
    return _write_bytes(Path(path), json.dumps(curves, indent=1).encode(), what="training curves")


def read_curves(rows: pd.DataFrame, csv) -> pd.DataFrame:
    """The training curves of ``rows`` in long format: dataset, category, category_type, model,
    seed, train_hash (the trained model's, which names its curves file), epoch, train_loss,
    val_loss and one column per loss term. Rows without a curves file (or a ``train_hash`` to
    name it) are left out; one curve per trained model even if several rows share it."""
    frames, seen = [], set()
    folder = runs_dir(csv)
    for _, row in rows.iterrows():
        train_hash = row.get("train_hash")
        if not isinstance(train_hash, str) or not train_hash or (row["model"], train_hash) in seen:
            continue
        seen.add((row["model"], train_hash))
        path = curves_path(folder, dataset=row["dataset"], category=row["category"], model=row["model"],
                           train_hash=train_hash)
        seed = _seed(row)
        if seed is None or not path.is_file():
            continue
        try:
            frame = load_curves(path)
        except DamagedSideFile as e:
            warnings.warn(f"training curves of {row['model']} on {row['category']} (seed {seed}) left out of the "
                          f"figure: {e}; delete it, or run that job again with --force to write it anew.",
                          stacklevel=2)
            continue
        for col in ("dataset", "category", "category_type", "model"):
            frame[col] = row[col]
        frame["seed"] = seed
        frame["train_hash"] = train_hash
        frames.append(frame)
    columns = ["dataset", "category", "category_type", "model", "seed", "train_hash", "epoch", "train_loss",
               "val_loss"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out[columns + [c for c in out.columns if c not in columns]]


def load_curves(path) -> pd.DataFrame:
    """One curves file as a table: epoch, train_loss, val_loss and one column per loss term;
    ``DamagedSideFile`` (saying why) for a file that is not what ``save_curves`` wrote."""
    try:
        curves = json.loads(Path(path).read_bytes())
        if not isinstance(curves, dict) or not isinstance(curves.get("terms", {}), dict):
            raise ValueError("not the curves' JSON object")
        lacks = [k for k in ("epoch", "train_loss", "val_loss") if k not in curves]
        if lacks:
            raise ValueError(f"it lacks {', '.join(lacks)}")
        columns = {k: curves[k] for k in ("epoch", "train_loss", "val_loss")} | curves.get("terms", {})
        if not all(isinstance(v, list) for v in columns.values()) or len({len(v) for v in columns.values()}) > 1:
            raise ValueError("its per-epoch lists differ in length")
        frame = pd.DataFrame(columns).astype(float)
        if not (frame["epoch"] % 1 == 0).all():
            raise ValueError("its epochs are not whole numbers")
    except READ_ERRORS as e:
        raise _damaged(path, e) from None
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


# ------------------------------------------------------------------ data manifests


def save_manifest(path, files: dict) -> Path:
    """A category's {relative path: content hash} (``fingerprint.DataFingerprint.files``)."""
    return _write_bytes(Path(path), json.dumps(files, indent=0, sort_keys=True).encode(), what="data manifest")


def load_manifest(path) -> dict | None:
    """The saved manifest, or None if there is none (or it is unreadable: it only improves a message)."""
    try:
        files = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):  # also garbage bytes (UnicodeDecodeError)
        return None
    plain = isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    return files if plain else None  # {relative path: content hash}, or another file's JSON
