"""One job: train one model on one category, evaluate it, record the row and the checkpoint.

A job is three steps, each a function with one job::

    model, history = train_model(spec, data)          # seeded init + fit()
    evaluation = evaluate.evaluate(model, data, spec.eval_config, ...)   # maps, scores, metrics
    row = record(spec, data, model, history, evaluation, ...)   # the row; saves the checkpoint

``run_job`` chains them; ``evaluate_checkpoint`` is the same job without training, from the
checkpoint of an earlier run (a new scoring rule, evaluation size or threshold). The grid
uses their halves that write nothing (``compute_job``, ``compute_from_checkpoint``: a
``JobOutput``) and writes each output with ``write_output`` only once its row is kept.
``JobSpec`` says everything that defines a job: its ``train_hash`` names the checkpoint
(what changes the weights), its ``config_hash`` the row (that plus the evaluation
settings); docs/design.md, "The cache key".
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from models import DEFAULT_IMAGE_SIZE, MODELS, AnomalyModel, ImageSize, ModelConfig, model_config, size_label
from models.errors import DatasetError, UserError
from models.mvtec import DECODE_VERSION, DEFAULT_VAL_FRACTION, MASK_VERSION, MVTecAD, category_type

from . import runs
from .checkpoints import (
    DEFAULT_CHECKPOINT_DIR,
    checkpoint_bytes,
    checkpoint_path,
    load_checkpoint,
    write_checkpoint,
)
from .evaluate import EvalConfig, Evaluation, evaluate
from .fingerprint import data_fingerprint
from .train import TrainConfig, fit, resolve_device, seed_everything

# Bump when the meaning of a config changes without its fields changing. 2: rows and
# checkpoints keyed by the data's fingerprint; scoring, evaluation size and threshold moved
# from the model config into the evaluation config.
HASH_VERSION = 2
# The row's columns that describe the training (copied from the checkpoint when a row is re-evaluated).
TRAINING_COLUMNS = ("train_seconds", "device", "peak_memory_mb", "train_loss", "val_loss", "batch_size",
                    "data_seconds", "params")


@dataclass(kw_only=True)
class JobSpec:
    """Everything that defines one (model, category, seed) job."""

    data_root: str | Path
    category: str
    model: str
    dataset: str  # dataset name (models.mvtec.dataset_name(data_root)), readable, part of the key
    data_fingerprint: str = ""  # fingerprint.data_fingerprint(...).digest; "" = computed when the job runs
    image_size: ImageSize = DEFAULT_IMAGE_SIZE  # S or (H, W): what every image of the category is resized to
    in_channels: int = 3  # experiments use RGB (grayscale categories are replicated to 3 channels)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"latent_dim": 64}
    eval_config: EvalConfig = field(default_factory=EvalConfig)  # scoring rule, evaluation size, threshold rule
    val_fraction: float = DEFAULT_VAL_FRACTION  # of train/good held out as val (threshold + validation loss)

    def model_config(self) -> ModelConfig:
        return model_config(self.model, image_size=self.image_size, in_channels=self.in_channels,
                            **self.model_overrides)

    def validate(self) -> None:
        """Every parameter error up front, before any data is read or model trained."""
        self.train.validate()
        self.model_config()
        self.eval_config.validate()

    def with_fingerprint(self) -> JobSpec:
        """This spec with its data fingerprint filled in (hashing the category's files if needed)."""
        if self.data_fingerprint:
            return self
        return dataclasses.replace(self, data_fingerprint=data_fingerprint(self.data_root, self.category).digest)

    def train_dict(self) -> dict:
        """Everything that changes the trained weights, JSON-ready (hashed into ``train_hash``)."""
        return json.loads(json.dumps({
            "hash_version": HASH_VERSION,
            "dataset": self.dataset,
            "category": self.category,
            "data_fingerprint": self.data_fingerprint,  # the files' bytes ...
            "decode_version": DECODE_VERSION,  # ... and how they are read into pixels and masks
            "model": self.model,
            "model_config": self.model_config().to_dict(),  # image size, channels, widths, prior ...
            "train": self.train.result_dict(),  # epochs, batch, lr, schedule, clip, amp, seed ...
            "val_fraction": self.val_fraction,
        }, sort_keys=True))

    def config_dict(self) -> dict:
        """Everything that changes the row: the training and the evaluation (hashed into ``config_hash``)."""
        return {**self.train_dict(), "eval": json.loads(json.dumps(self.eval_config.to_dict())),
                "mask_version": MASK_VERSION}  # how the masks are read: evaluation only, never the checkpoint

    def train_hash(self) -> str:
        """Names the checkpoint: equal for two jobs that differ only in how they are evaluated."""
        return config_hash(self.train_dict())

    def config_hash(self) -> str:
        return config_hash(self.config_dict())

    def key(self) -> tuple[str, str, str, str]:
        return (self.dataset, self.category, self.model, self.config_hash())

    def checkpoint_path(self, checkpoint_dir) -> Path:
        return checkpoint_path(checkpoint_dir, dataset=self.dataset, category=self.category, model=self.model,
                               train_hash=self.train_hash())

    def describe(self) -> str:
        return f"{self.model} on {self.category!r}" + (f" (seed {self.train.seed})" if self.train.seed else "")


def config_hash(config: dict) -> str:
    """12 hex digits of the SHA-256 of the config's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class CategoryData:
    train: MVTecAD
    val: MVTecAD
    test: MVTecAD
    seconds: float = 0.0  # time to decode (or fetch from cache) the three splits


def load_category(root, category: str, *, image_size: ImageSize = DEFAULT_IMAGE_SIZE, in_channels: int = 3,
                  seed: int = 0, val_fraction: float = DEFAULT_VAL_FRACTION, cache_dir=None) -> CategoryData:
    """The train / val / test splits of one category, decoded once (shared by the models of a grid)."""
    t0 = time.perf_counter()
    kw = dict(image_size=image_size, in_channels=in_channels, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
    splits = [MVTecAD(root, category, split, **kw) for split in ("train", "val", "test")]
    return CategoryData(*splits, seconds=time.perf_counter() - t0)


def reset_peak_memory(device: torch.device) -> None:
    """Start a job's peak-memory window: CUDA's peak counter, or on Linux the process's RSS
    high-water mark (``/proc/self/clear_refs`` "5", which ``getrusage``'s ru_maxrss follows)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak stays the process-wide high-water mark
        pass


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the job's peak allocated memory. CPU: the process's peak resident set since
    ``reset_peak_memory`` (on Linux; elsewhere since the process started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def train_model(spec: JobSpec, data: CategoryData, *,
                on_epoch: Callable[[int, dict], None] | None = None) -> tuple[AnomalyModel, dict]:
    """Step 1: a freshly initialised model of ``spec`` (seeded), trained on ``data.train``;
    returns it (in eval mode) and its training history (``train.fit``)."""
    seed_everything(spec.train.seed)  # model init and everything after it
    model = MODELS[spec.model](spec.model_config())
    history = fit(model, data.train, data.val, spec.train, desc=spec.describe(), on_epoch=on_epoch)
    return model, history


def training_columns(model: AnomalyModel, history: dict, *, peak_memory: float, data_seconds: float) -> dict:
    """The row's columns that describe how the model was trained (TRAINING_COLUMNS)."""
    return {
        "train_seconds": history["seconds"],
        "device": history["device"],
        "peak_memory_mb": peak_memory,
        "train_loss": history["train_loss"][-1],
        "val_loss": history["val_loss"][-1],
        "batch_size": history["batch_size"],
        "data_seconds": data_seconds,
        "params": sum(p.numel() for p in model.parameters()),
    }


def make_row(spec: JobSpec, data: CategoryData, training: dict, evaluation: Evaluation, *,
             kind: str | None = None) -> dict:
    """The results row of a job (results.COLUMNS and EXTRA_COLUMNS). ``kind``: the category's
    type when known (a Ray worker has no copy of the dataset folder to read it from)."""
    cfg, ev = spec.train, spec.eval_config
    config = spec.config_dict()
    return {
        "dataset": spec.dataset,
        "category": spec.category,
        "category_type": kind if kind is not None else category_type(spec.data_root, spec.category),
        "model": spec.model,
        **evaluation.metrics,  # evaluate.METRIC_NAMES (the CSV orders the columns, results.COLUMNS)
        "threshold_rule": ev.threshold_rule,
        "score": ev.score.name,
        "epochs": cfg.epochs,
        "image_size": size_label(spec.image_size),  # "128", or "96x240" (height x width)
        "eval_size": evaluation.grid if isinstance(evaluation.grid, str) else size_label(evaluation.grid),
        "seed": cfg.seed,
        "infer_ms_per_image": evaluation.infer_ms_per_image,
        "data_fingerprint": spec.data_fingerprint,
        "train_hash": spec.train_hash(),
        "config_hash": config_hash(config),
        "torch_version": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **training,
        "n_train": len(data.train.images),
        "n_val": len(data.val.images),
        "n_test": len(data.test.images),
        "lr": cfg.lr,
        "score_seconds": evaluation.score_seconds,
        "metrics_seconds": evaluation.metrics_seconds,
        "config_json": json.dumps(config, sort_keys=True),
    }


def side_file_writes(spec: JobSpec, data: CategoryData, evaluation: Evaluation, runs_dir, *,
                     history: dict | None = None, trained: bool = True) -> list[tuple[str, Path, Callable[[], object]]]:
    """The row's side files under ``runs_dir`` as (what, path, write) triples, written by
    ``write_output``: the per-image scores, and the training curves when ``history`` is given
    (for a model not ``trained`` here, only if its training left none)."""
    root = Path(data.test.root) / spec.category
    where = dict(dataset=spec.dataset, category=spec.category, model=spec.model)
    scores = runs.scores_path(runs_dir, **where, config_hash=spec.config_hash())
    writes = [("per-image scores", scores, lambda: runs.save_scores(
        scores, labels=data.test.labels.numpy(), test_scores=evaluation.test_scores.numpy(),
        val_scores=evaluation.val_scores.numpy(), pixel_pos=evaluation.pixel_pos, pixel_neg=evaluation.pixel_neg,
        test_paths=[Path(p).relative_to(root).as_posix() for p in data.test.paths]))]
    curves = runs.curves_path(runs_dir, **where, train_hash=spec.train_hash())
    if history is not None and (trained or not curves.is_file()):  # a re-evaluation's history is its training's
        writes.append(("training curves", curves, lambda: runs.save_curves(curves, history)))
    return writes


def warn_unwritten(errors: list[str]) -> None:
    for error in errors:
        warnings.warn(error, stacklevel=3)


def record(spec: JobSpec, data: CategoryData, model: AnomalyModel, history: dict, evaluation: Evaluation, *,
           checkpoint_dir=DEFAULT_CHECKPOINT_DIR, runs_dir=None, peak_memory: float = float("nan")) -> dict:
    """Step 3: the results row of a finished job; saves the model's checkpoint (with the row
    and the training history) under ``checkpoint_dir`` and the side files (per-image scores,
    training curves) under ``runs_dir``, each unless None. A file that cannot be written is a
    warning (``write_output``): the row is returned all the same."""
    output = make_output(spec, data, model, history, evaluation, peak_memory=peak_memory)
    warn_unwritten(write_output(spec, data, output, checkpoint_dir=checkpoint_dir, runs_dir=runs_dir))
    return output.row


def check_test_split(spec: JobSpec, data: CategoryData) -> None:
    if data.test.labels.numel() == 0:
        raise DatasetError(f"category {spec.category!r} has no test images under "
                           f"{Path(spec.data_root) / spec.category / 'test'}; add some.")


def _load(spec: JobSpec, data: CategoryData | None, cache_dir) -> CategoryData:
    if data is None:
        data = load_category(spec.data_root, spec.category, image_size=spec.image_size, in_channels=spec.in_channels,
                             seed=spec.train.seed, val_fraction=spec.val_fraction, cache_dir=cache_dir)
    check_test_split(spec, data)
    return data


def run_job(spec: JobSpec, data: CategoryData | None = None, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
            runs_dir=None, cache_dir=None, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train, evaluate and record one (model, category, seed); returns the results row.

    ``data`` lets a grid decode a category once for all its models; without it the category
    is loaded here.
    """
    spec.validate()
    spec = spec.with_fingerprint()
    data = _load(spec, data, cache_dir)
    output = compute_job(spec, data, on_epoch=on_epoch)
    warn_unwritten(write_output(spec, data, output, checkpoint_dir=checkpoint_dir, runs_dir=runs_dir))
    return output.row


def release_memory(spec: JobSpec) -> None:
    gc.collect()
    if resolve_device(spec.train.device).type == "cuda":
        torch.cuda.empty_cache()


def train_and_evaluate(spec: JobSpec, data: CategoryData, *, on_epoch: Callable[[int, dict], None] | None = None
                       ) -> tuple[AnomalyModel, dict, Evaluation, float]:
    """Steps 1 and 2, writing nothing: the trained model, its history, its evaluation and the
    job's peak memory (MB)."""
    device = resolve_device(spec.train.device)
    reset_peak_memory(device)
    model, history = train_model(spec, data, on_epoch=on_epoch)
    evaluation = evaluate(model, data, spec.eval_config, batch_size=history["batch_size"], amp=spec.train.amp,
                          desc=spec.describe())
    return model, history, evaluation, peak_memory_mb(device)


@dataclass
class JobOutput:
    """What a job produced, before anything is written (a Ray task returns it to the driver;
    the grid writes it with ``write_output`` once its row is kept): the row, the checkpoint
    file's bytes (None for a job re-evaluated from its checkpoint) and the side files' data."""

    row: dict
    checkpoint: bytes | None
    evaluation: Evaluation
    history: dict


def make_output(spec: JobSpec, data: CategoryData, model: AnomalyModel, history: dict, evaluation: Evaluation, *,
                peak_memory: float = float("nan"), kind: str | None = None) -> JobOutput:
    """The row of a trained and evaluated job and its checkpoint's bytes (with the row and the
    history), written by nobody yet. ``kind``: the category's type (``make_row``)."""
    training = training_columns(model, history, peak_memory=peak_memory, data_seconds=data.seconds)
    row = make_row(spec, data, training, evaluation, kind=kind)
    ckpt = checkpoint_bytes(model, name=spec.model, row=row, train_config=spec.train, history=history,
                            training=training)
    return JobOutput(row=row, checkpoint=ckpt, evaluation=evaluation, history=history)


def compute_job(spec: JobSpec, data: CategoryData, *, kind: str | None = None,
                on_epoch: Callable[[int, dict], None] | None = None) -> JobOutput:
    """Train and evaluate ``spec`` on ``data`` (its fingerprint filled in) and return what
    ``record`` would write; writes nothing."""
    model = None
    try:
        model, history, evaluation, peak = train_and_evaluate(spec, data, on_epoch=on_epoch)
        output = make_output(spec, data, model, history, evaluation, peak_memory=peak, kind=kind)
        output.evaluation = without_maps(evaluation)
        return output
    finally:  # nothing of this job outlives it (models, optimiser state, device memory)
        del model
        release_memory(spec)


def without_maps(evaluation: Evaluation) -> Evaluation:
    """The maps are not written anywhere: do not keep them (nor ship them back to the driver)."""
    return dataclasses.replace(evaluation, test_maps=torch.empty(0))


def write_output(spec: JobSpec, data: CategoryData, output: JobOutput, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
                 runs_dir=None) -> list[str]:
    """Write the files behind ``output.row``: its checkpoint (unless None: re-evaluated) under
    ``checkpoint_dir`` and its side files under ``runs_dir``, each unless None. Returns one
    sentence per file the file system refused (disk full, quota, read-only): that file is left
    out and the others are written, since the row's numbers are right and worth keeping
    without it (``write_or_clear``)."""
    writes = []
    if checkpoint_dir is not None and output.checkpoint is not None:
        path = spec.checkpoint_path(checkpoint_dir)
        writes.append(("checkpoint", path, lambda: write_checkpoint(path, output.checkpoint)))
    if runs_dir is not None:
        writes += side_file_writes(spec, data, output.evaluation, runs_dir, history=output.history,
                                   trained=output.checkpoint is not None)
    errors = [write_or_clear(what, path, write) for what, path, write in writes]
    return [e for e in errors if e is not None]


def write_or_clear(what: str, path: Path, write: Callable[[], object]) -> str | None:
    """Run ``write``, which writes ``path``; None if it did. If it is refused (a ``UserError``
    naming the file; no half file is left), a file already at ``path`` is removed, because it
    belongs to another training or row (one replaced by ``--force``) and would pass for this
    one's; returns the sentence to show."""
    try:
        write()
        return None
    except UserError as e:
        error = e
    try:
        path.unlink(missing_ok=True)
    except OSError as gone:
        raise type(error)(f"{str(error).rstrip('.')}, and the older file there, of another row, cannot be removed "
                          f"({gone.strerror}) either; remove it by hand.") from None
    return f"kept the row without its {what}: {error}"


def compute_from_checkpoint(spec: JobSpec, data: CategoryData, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR
                            ) -> JobOutput:
    """``spec`` (its fingerprint filled in) evaluated on ``data`` from the checkpoint its
    training saved, without training; writes nothing (``evaluate_checkpoint`` does). The
    training columns and history come from the checkpoint. ``CheckpointError`` if it is
    missing, damaged or of another config."""
    model = load_checkpoint(spec.checkpoint_path(checkpoint_dir), model=spec.model, config=spec.model_config(),
                            device=resolve_device(spec.train.device))
    try:
        stored = model.checkpoint
        training = stored.get("training") or {k: (stored.get("row") or {}).get(k) for k in TRAINING_COLUMNS}
        batch_size = int(training.get("batch_size") or spec.train.batch_size)
        evaluation = evaluate(model, data, spec.eval_config, batch_size=batch_size, amp=spec.train.amp,
                              desc=spec.describe())
        return JobOutput(row=make_row(spec, data, dict(training), evaluation), checkpoint=None,
                         evaluation=without_maps(evaluation), history=stored.get("history"))
    finally:
        del model
        release_memory(spec)


def evaluate_checkpoint(spec: JobSpec, data: CategoryData | None = None, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
                        runs_dir=None, cache_dir=None) -> dict:
    """The row of ``spec`` from the checkpoint its training saved (``spec.checkpoint_path``),
    evaluated under ``spec.eval_config`` without training (``compute_from_checkpoint``), its
    side files written under ``runs_dir`` (a file that cannot be is a warning)."""
    spec.validate()
    spec = spec.with_fingerprint()
    data = _load(spec, data, cache_dir)
    output = compute_from_checkpoint(spec, data, checkpoint_dir=checkpoint_dir)
    warn_unwritten(write_output(spec, data, output, checkpoint_dir=checkpoint_dir, runs_dir=runs_dir))
    return output.row
