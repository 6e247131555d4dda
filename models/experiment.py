"""Experiments: one job = train + evaluate one (model, category) -> a results row; the grid
of jobs; the results CSV that caches finished rows (DESIGN.md section 6).

The CSV is the cache. One row per key (dataset, category, model, config_hash), where
``config_hash`` covers everything that changes a result: the model config (scoring rule
included), the training config (minus device, threads, progress and compile), image size,
seed, val fraction, threshold rule, dataset name and category. A rerun skips the keys
already present (and writes nothing: the file stays byte-identical); ``force`` retrains
and replaces them; deleting the file retrains everything.

Each row is written the moment its job ends: under an exclusive ``fcntl.flock`` on a side
lock file, the CSV is re-read (another run may have added rows), the row appended, the
table written to a temporary file in the same folder and renamed over the CSV. A SIGKILL
or Ctrl-C at any point leaves either the old or the new complete file, and two runs
sharing one CSV neither lose nor duplicate rows. Existing cells are kept as the exact text
they were written as; columns of an older or newer schema are kept (missing ones are
empty). A CSV that cannot be read is an error naming it and is never overwritten.
"""
from __future__ import annotations

import contextlib
import gc
import glob
import hashlib
import json
import math
import os
import re
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import metrics, mvtec, scoring
from .errors import ConfigError, DatasetError, TrainingError, UserError
from .training import (BatchSource, TrainConfig, _autocast, _umask, batch_indices, fit, has_conv, resolve_device,
                       save_checkpoint, seed_everything)

try:  # POSIX; elsewhere concurrent runs on one CSV are not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

DEFAULT_RESULTS_CSV = "evaluation_results_all_models.csv"
DEFAULT_CHECKPOINT_DIR = "checkpoints"  # git-ignored
KEY_COLUMNS = ("dataset", "category", "model", "config_hash")
# The contract's columns, in this order (DESIGN section 6) ...
COLUMNS = (
    "dataset", "category", "category_type", "model", "image_auroc", "pixel_auroc", "aupro", "f1",
    "precision", "recall", "threshold", "threshold_rule", "f1_max", "score", "epochs", "image_size", "seed",
    "train_seconds", "infer_ms_per_image", "params", "config_hash", "device", "torch_version", "finished_at",
)
# ... then these extras.
EXTRA_COLUMNS = (
    "peak_memory_mb", "n_train", "n_val", "n_test", "train_loss", "val_loss", "batch_size", "lr",
    "data_seconds", "score_seconds", "metrics_seconds", "config_json",
)
TEXT_COLUMNS = ("dataset", "category", "category_type", "model", "threshold_rule", "score", "config_hash",
                "device", "torch_version", "finished_at", "config_json")
HASH_VERSION = 1  # bump when the meaning of a config changes without its fields changing


class ResultsError(UserError, ValueError):
    """A results CSV that cannot be read or written."""


# --- one job ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class JobSpec:
    """Everything that defines one (model, category) job."""

    data_root: str | Path
    category: str
    model: str
    dataset: str  # dataset name (models.mvtec.dataset_name(data_root)), part of the key
    image_size: int = 128
    in_channels: int = 3  # experiments use RGB (grayscale categories are replicated to 3 channels)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"latent_dim": 64}
    threshold_rule: str = "val_max"  # see metrics.val_threshold
    val_fraction: float = 0.1  # of train/good held out as val (threshold + validation loss)

    def model_config(self):
        from . import model_config

        return model_config(self.model, image_size=self.image_size, in_channels=self.in_channels, **self.model_overrides)

    def validate(self) -> None:
        """Every parameter error up front, before any data is read or model trained."""
        self.train.validate()
        self.model_config()
        try:
            metrics.val_threshold([0.0], self.threshold_rule)
        except ValueError as e:
            raise ConfigError(f"{e}.") from None

    def config_dict(self) -> dict:
        """Everything that changes the result, JSON-ready (hashed into config_hash)."""
        return json.loads(json.dumps({
            "hash_version": HASH_VERSION,
            "dataset": self.dataset,
            "category": self.category,
            "model": self.model,
            "model_config": self.model_config().to_dict(),  # image size, channels, scoring rule, widths ...
            "train": self.train.result_dict(),  # epochs, batch, lr, schedule, clip, amp, seed ...
            "threshold_rule": self.threshold_rule,
            "val_fraction": self.val_fraction,
        }, sort_keys=True))

    def config_hash(self) -> str:
        return config_hash(self.config_dict())

    def key(self) -> tuple[str, str, str, str]:
        return (self.dataset, self.category, self.model, self.config_hash())


def config_hash(config: dict) -> str:
    """12 hex digits of the SHA-256 of the config's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class CategoryData:
    train: mvtec.MVTecAD
    val: mvtec.MVTecAD
    test: mvtec.MVTecAD
    seconds: float = 0.0  # time to decode (or fetch from cache) the three splits


def load_category(root, category: str, *, image_size: int = 128, in_channels: int = 3, seed: int = 0,
                  val_fraction: float = 0.1, cache_dir=None) -> CategoryData:
    """The train / val / test splits of one category, decoded once (shared by the models of a grid)."""
    t0 = time.perf_counter()
    kw = dict(image_size=image_size, in_channels=in_channels, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
    splits = [mvtec.MVTecAD(root, category, split, **kw) for split in ("train", "val", "test")]
    return CategoryData(*splits, seconds=time.perf_counter() - t0)


def score_split(model, ds, *, batch_size: int = 32, device=None, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (N, H, W) float32 and image scores (N,) of a whole split, on the CPU.

    Batched, in eval mode under ``inference_mode`` (``AnomalyModel.anomaly_map``); the image
    score is reduced from the same map, so the reconstruction runs once per image.
    """
    device = device or next(model.parameters()).device
    cfg = model.config
    channels_last = has_conv(model) and device.type in ("cuda", "cpu")  # NHWC convs are faster on both
    if channels_last:
        model.to(memory_format=torch.channels_last)  # a no-op after fit(); a loaded checkpoint is NCHW
    source = BatchSource(ds.images, device, channels_last=channels_last)
    maps, scores = [], []
    with torch.inference_mode():
        for idx in batch_indices(len(source), batch_size):
            with _autocast(device, amp):
                m = model.anomaly_map(source.batch(idx)).float()  # (B, H, W)
            scores.append(scoring.reduce_map(m, score_reduce=cfg.score_reduce, score_topk=cfg.score_topk))
            maps.append(m)
    if not maps:
        s = ds.images.shape[-1]
        return torch.empty((0, s, s)), torch.empty(0)
    return torch.cat(maps).cpu(), torch.cat(scores).cpu()  # one device->host copy (and sync), not one per batch


def _reset_peak_memory(device: torch.device) -> None:
    """Start a job's peak-memory window: CUDA's peak counter, or on Linux the process's RSS
    high-water mark (``/proc/self/clear_refs`` "5", which ``getrusage``'s ru_maxrss follows)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak stays the process-wide high-water mark
        pass


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: the job's peak allocated memory. CPU: the process's peak resident set since
    ``_reset_peak_memory`` (on Linux; elsewhere since the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def run_job(spec: JobSpec, data: CategoryData | None = None, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
            cache_dir=None) -> dict:
    """Train and evaluate one (model, category); returns the results row (and saves a checkpoint).

    ``data`` lets a grid decode a category once for all its models; without it the category
    is loaded here.
    """
    from . import MODELS

    spec.validate()
    cfg = spec.train
    model_cfg = spec.model_config()
    device = resolve_device(cfg.device)
    if data is None:
        data = load_category(spec.data_root, spec.category, image_size=spec.image_size, in_channels=spec.in_channels,
                             seed=cfg.seed, val_fraction=spec.val_fraction, cache_dir=cache_dir)
    if data.test.labels.numel() == 0:
        raise DatasetError(f"category {spec.category!r} has no test images under {Path(spec.data_root) / spec.category / 'test'}; add some.")
    _reset_peak_memory(device)
    desc = f"{spec.model} on {spec.category!r}"
    model = None
    try:
        seed_everything(cfg.seed)  # model init and everything after it
        model = MODELS[spec.model](model_cfg)
        history = fit(model, data.train, data.val, cfg, desc=desc)

        t0 = time.perf_counter()
        test_maps, test_scores = score_split(model, data.test, batch_size=history["batch_size"], device=device, amp=cfg.amp)
        score_seconds = time.perf_counter() - t0
        _, val_scores = score_split(model, data.val, batch_size=history["batch_size"], device=device, amp=cfg.amp)
        if not (torch.isfinite(test_maps).all() and torch.isfinite(val_scores).all()):
            raise TrainingError(f"{desc}: the trained model gives NaN or infinite anomaly maps (training diverged "
                                f"in its last steps); lower the learning rate (now {cfg.lr:g}) or keep gradient clipping on.")

        t0 = time.perf_counter()
        labels = data.test.labels.numpy()
        row_metrics = {"image_auroc": metrics.image_auroc(labels, test_scores)}
        if data.test.has_masks:
            masks = data.test.masks.numpy()
            row_metrics["pixel_auroc"] = metrics.pixel_auroc(masks, test_maps)
            row_metrics["aupro"] = metrics.aupro(masks, test_maps)
        else:  # the dataset already warned which masks are missing
            row_metrics["pixel_auroc"] = row_metrics["aupro"] = math.nan
        threshold = metrics.val_threshold(val_scores, spec.threshold_rule)
        row_metrics.update(metrics.f1_at_threshold(labels, test_scores, threshold))
        row_metrics["f1_max"] = metrics.f1_max(labels, test_scores)
        metrics_seconds = time.perf_counter() - t0

        config = spec.config_dict()
        key_hash = config_hash(config)
        row = {
            "dataset": spec.dataset,
            "category": spec.category,
            "category_type": mvtec.category_type(spec.data_root, spec.category),
            "model": spec.model,
            **{k: row_metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1", "precision", "recall")},
            "threshold": threshold,
            "threshold_rule": spec.threshold_rule,
            "f1_max": row_metrics["f1_max"],
            "score": model_cfg.score_name,
            "epochs": cfg.epochs,
            "image_size": spec.image_size,
            "seed": cfg.seed,
            "train_seconds": history["seconds"],
            "infer_ms_per_image": 1000.0 * score_seconds / max(1, len(test_scores)),
            "params": sum(p.numel() for p in model.parameters()),
            "config_hash": key_hash,
            "device": str(device),
            "torch_version": torch.__version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "peak_memory_mb": _peak_memory_mb(device),
            "n_train": len(data.train.images),
            "n_val": len(data.val.images),
            "n_test": len(data.test.images),
            "train_loss": history["train_loss"][-1],
            "val_loss": history["val_loss"][-1],
            "batch_size": history["batch_size"],
            "lr": cfg.lr,
            "data_seconds": data.seconds,
            "score_seconds": score_seconds,
            "metrics_seconds": metrics_seconds,
            "config_json": json.dumps(config, sort_keys=True),
        }
        if checkpoint_dir is not None:
            path = Path(checkpoint_dir) / _safe(spec.dataset) / _safe(spec.category) / f"{spec.model}-{key_hash}.pt"
            save_checkpoint(path, model, name=spec.model, row=row, train_config=cfg)
        return row
    finally:  # nothing of this job outlives it (models, optimiser state, device memory)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "_"


# --- the results CSV ----------------------------------------------------------------------------


def _cell(value) -> str:
    """A row value as CSV text: floats with repr (exact round trip), NaN/None as empty."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def _ordered_columns(*tables_columns) -> list[str]:
    """The contract's columns, the extras, then any other columns in the order first seen."""
    seen = list(COLUMNS) + list(EXTRA_COLUMNS)
    for cols in tables_columns:
        seen += [c for c in cols if c not in seen]
    present = set().union(*map(set, tables_columns))
    return [c for c in seen if c in present or c in COLUMNS]


def _unreadable(csv: Path, why: str) -> ResultsError:
    return ResultsError(
        f"results file {str(csv)!r} cannot be read ({why}); it was left untouched: "
        f"fix or move it, or pass another --results-csv."
    )


def _read_text_table(csv: Path) -> pd.DataFrame:
    """The CSV with every cell as the exact text written (used to append without rewriting cells)."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise _unreadable(csv, "the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _unreadable(csv, str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__) from None
    except OSError as e:
        raise _unreadable(csv, e.strerror or type(e).__name__) from None
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise _unreadable(csv, f"it has no {', '.join(missing)} column, so it is not a results table of this version")
    return df


def read_results(csv=DEFAULT_RESULTS_CSV, *, missing_ok: bool = False) -> pd.DataFrame:
    """The results table with typed columns; every contract column is present (NaN where an
    older file lacks it) and no column of the file is dropped."""
    csv = Path(csv)
    if not csv.exists():
        if missing_ok:
            return pd.DataFrame(columns=list(COLUMNS))
        raise ResultsError(f"no results file at {str(csv)!r}; run `python -m models run` first or pass --results-csv.")
    _read_text_table(csv)  # the same checks (and errors) as when appending
    df = pd.read_csv(csv, dtype={c: str for c in TEXT_COLUMNS})
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    return df[_ordered_columns(df.columns)]


@contextlib.contextmanager
def _locked(csv: Path):
    """Exclusive lock on ``.<csv name>.lock`` next to the CSV (blocks while another run writes)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = csv.with_name(f".{csv.name}.lock")
    try:
        f = open(lock, "a")
    except OSError as e:
        raise ResultsError(f"cannot create the lock file {str(lock)!r} ({e.strerror}); make the folder writable or pass another --results-csv.") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write_csv(df: pd.DataFrame, csv: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``csv`` (all or nothing)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{csv.name}.", suffix=".tmp", dir=csv.parent)
    except OSError as e:
        raise ResultsError(f"cannot write results next to {str(csv)!r} ({e.strerror}); make the folder writable or pass another --results-csv.") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        mode = csv.stat().st_mode & 0o777 if csv.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)  # mkstemp makes 0600; keep the old file's permissions
        os.replace(tmp, csv)
    except OSError as e:  # disk full, quota, file size limit: the old file was never touched
        Path(tmp).unlink(missing_ok=True)
        raise ResultsError(f"cannot write results to {str(csv)!r} ({e.strerror or e}); the file was left as it was: "
                           f"free disk space or pass another --results-csv.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(csv) -> Path:
    """Fail before any training if the results can be neither read nor written."""
    csv = Path(csv)
    try:
        csv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "a file of that name is in the way" if isinstance(e, FileExistsError) else e.strerror
        raise ResultsError(f"cannot create the results folder {str(csv.parent)!r} ({why}); pass another --results-csv.") from None
    if csv.exists():
        _read_text_table(csv)
        if not os.access(csv, os.W_OK):
            raise ResultsError(f"results file {str(csv)!r} is read-only; make it writable or pass another --results-csv (it was left untouched).")
    if not os.access(csv.parent, os.W_OK):
        raise ResultsError(f"the results folder {str(csv.parent)!r} is not writable; make it writable or pass another --results-csv.")
    return csv


def _remove_orphan_temps(csv: Path) -> None:
    """Delete temp files of this CSV left by a writer killed mid-write. Called under the lock:
    writers create temp files only while holding it, so any found now is an orphan."""
    if fcntl is None:  # pragma: no cover - no lock, no certainty
        return
    name = re.compile(rf"\.{re.escape(csv.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp's 8 random characters
    for p in csv.parent.glob(f".{glob.escape(csv.name)}.*.tmp"):
        if name.fullmatch(p.name):
            p.unlink(missing_ok=True)


def append_row(csv, row: dict, *, replace: bool = False) -> bool:
    """Add ``row`` to the CSV atomically, under the lock; False if its key is already there
    (written meanwhile by another run) and ``replace`` is off. Other rows keep their exact text."""
    csv = Path(csv)
    with _locked(csv):
        _remove_orphan_temps(csv)
        table = _read_text_table(csv) if csv.exists() else pd.DataFrame(columns=list(COLUMNS))
        key = [str(row[k]) for k in KEY_COLUMNS]
        present = (table[list(KEY_COLUMNS)] == key).all(axis=1) if len(table) else pd.Series([], dtype=bool)
        if present.any() and not replace:
            return False
        new = pd.DataFrame([{k: _cell(v) for k, v in row.items()}], dtype=str)
        columns = _ordered_columns(table.columns, new.columns)
        out = pd.concat([table.loc[~present].reindex(columns=columns, fill_value=""),
                         new.reindex(columns=columns, fill_value="")], ignore_index=True)
        _atomic_write_csv(out, csv)
    return True


# --- the grid -----------------------------------------------------------------------------------


def make_specs(data_root, categories=None, models=None, *, image_size: int = 128, train: TrainConfig | None = None,
               model_overrides: dict | None = None, threshold_rule: str = "val_max",
               val_fraction: float = 0.1) -> list[JobSpec]:
    """The grid's jobs, category-major (a category is decoded once for all its models), validated."""
    from . import MODEL_NAMES, list_categories

    available = list_categories(data_root)  # DatasetError for a missing or empty root
    cats = available if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in cats if c not in available]
    if unknown:
        raise DatasetError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
                           f"in {str(data_root)!r}; valid: {', '.join(available)}.")
    names = list(MODEL_NAMES) if models is None else list(dict.fromkeys(models))
    overrides = dict(model_overrides or {})
    for name in set(names) | set(overrides):
        if name not in MODEL_NAMES:
            raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
        for key in ("image_size", "in_channels"):
            if key in overrides.get(name, {}):
                raise ConfigError(f"{name}.{key} cannot be overridden per model; the grid sets {key} for all models "
                                  f"(--image-size on the command line).")
    dataset = mvtec.dataset_name(data_root)
    train = train or TrainConfig()
    specs = [JobSpec(data_root=data_root, category=c, model=m, dataset=dataset, image_size=image_size, train=train,
                     model_overrides=dict(overrides.get(m, {})), threshold_rule=threshold_rule,
                     val_fraction=val_fraction)
             for c in cats for m in names]
    for s in specs:
        s.validate()
    return specs


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def run_grid(data_root, categories=None, models=None, *, image_size: int = 128, train: TrainConfig | None = None,
             model_overrides: dict | None = None, results_csv=DEFAULT_RESULTS_CSV, force: bool = False,
             checkpoint_dir=DEFAULT_CHECKPOINT_DIR, threshold_rule: str = "val_max", val_fraction: float = 0.1,
             cache_dir=None, log=print) -> pd.DataFrame:
    """Train and evaluate every (category, model) whose row is not yet in ``results_csv``.

    Returns the grid's rows (cached and new) as a DataFrame in grid order; ``df.attrs``
    holds ``failures`` (list of {category, model, error}), ``ran`` and ``skipped``. A failing
    job is reported in one line and the grid goes on; Ctrl-C stops it with every finished
    row kept. ``model_overrides`` maps a model name to config overrides.
    """
    specs = make_specs(data_root, categories, models, image_size=image_size, train=train,
                       model_overrides=model_overrides, threshold_rule=threshold_rule, val_fraction=val_fraction)
    csv = check_writable(results_csv)
    done = set()
    if csv.exists():
        existing = _read_text_table(csv)
        done = set(map(tuple, existing[list(KEY_COLUMNS)].itertuples(index=False, name=None)))
    keys = [s.key() for s in specs]
    todo = [(s, k) for s, k in zip(specs, keys) if force or k not in done]
    log(f"{len(specs)} job(s): {len(specs) - len(todo)} already in {csv}, {len(todo)} to run.")
    if todo and checkpoint_dir is not None:
        try:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = "a file of that name is in the way" if isinstance(e, FileExistsError) else e.strerror
            raise ResultsError(f"cannot create the checkpoint folder {str(checkpoint_dir)!r} ({why}); "
                               f"pass another --checkpoint-dir.") from None

    failures: list[dict] = []
    data, data_category, data_error = None, None, None
    for i, (spec, key) in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {spec.model} on {spec.category} ...")
        try:
            if data_category != spec.category:  # release the previous category before loading the next
                data, data_error = None, None
                gc.collect()
                data_category = spec.category
                try:
                    data = load_category(data_root, spec.category, image_size=spec.image_size,
                                         in_channels=spec.in_channels, seed=spec.train.seed,
                                         val_fraction=spec.val_fraction, cache_dir=cache_dir)
                except UserError as e:
                    data_error = str(e)
            if data_error is not None:
                raise DatasetError(data_error)
            row = run_job(spec, data, checkpoint_dir=checkpoint_dir)
        except UserError as e:
            failures.append({"category": spec.category, "model": spec.model, "error": str(e)})
            log(f"[{i}/{len(todo)}] FAILED {spec.model} on {spec.category}: {e}")
            continue
        except Exception as e:  # a bug: report it in one line, keep the traceback text, go on
            failures.append({"category": spec.category, "model": spec.model, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()})
            log(f"[{i}/{len(todo)}] FAILED {spec.model} on {spec.category}: {type(e).__name__}: {e}")
            del e
            gc.collect()
            continue
        written = append_row(csv, row, replace=force)
        note = "" if written else " (another run wrote this row meanwhile; kept theirs)"
        log(f"[{i}/{len(todo)}] {spec.model} on {spec.category}: image AUROC {_fmt(row['image_auroc'])}, "
            f"pixel AUROC {_fmt(row['pixel_auroc'])}, AU-PRO {_fmt(row['aupro'])}, F1 {_fmt(row['f1'])} "
            f"in {row['train_seconds']:.1f} s{note}")
    data = None
    gc.collect()

    table = read_results(csv, missing_ok=True)
    index = {k: i for i, k in enumerate(keys)}
    table_keys = list(zip(*(table[c].astype(str) for c in KEY_COLUMNS)))
    mask = [k in index for k in table_keys]
    out = table.loc[mask].copy()
    out["_order"] = [index[k] for k, m in zip(table_keys, mask) if m]
    out = out.sort_values("_order").drop(columns="_order").reset_index(drop=True)
    out.attrs.update(failures=failures, ran=len(todo) - len(failures), skipped=len(specs) - len(todo))
    return out
