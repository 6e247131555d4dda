"""One job: train one model on one category and evaluate it; the row, checkpoint and side files it writes.

``JobSpec`` says everything that defines a job: its ``train_hash`` names the checkpoint
(what changes the weights), its ``config_hash`` the row (that plus the evaluation settings);
docs/design.md, "The cache key". A job is computed without writing anything, trained
(``compute_job``) or re-evaluated from the checkpoint of an earlier run
(``evaluate_checkpoint``: a new scoring rule, evaluation size or threshold), into a
``JobOutput``; ``write_output`` writes its files, once the grid knows its row is kept.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import torch

from models import DEFAULT_IMAGE_SIZE, MODELS, AnomalyModel, ImageSize, ModelConfig, model_config, size_label
from models.errors import DatasetError, UserError
from models.mvtec import DECODE_VERSION, DEFAULT_VAL_FRACTION, MASK_VERSION, MVTecAD, category_type

from . import runs
from .checkpoints import checkpoint_bytes, checkpoint_path, load_checkpoint, write_checkpoint
from .evaluate import EvalConfig, Evaluation, evaluate
from .memory import peak_memory_mb, reset_peak_memory
from .train import TrainConfig, check_repair_support, fit, resolve_device, seed_everything

# Bump when the meaning of a config changes without its fields changing. 2: rows and
# checkpoints keyed by the data's fingerprint; scoring, evaluation size and threshold moved
# from the model config into the evaluation config.
HASH_VERSION = 2
# The row's columns that describe the training (copied from the checkpoint when a row is re-evaluated).
TRAINING_COLUMNS = ("train_seconds", "device", "peak_memory_mb", "train_loss", "val_loss", "batch_size",
                    "data_seconds", "params", "epochs", "steps")


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything that defines one (model, category, seed) job; validated when it is made (a
    ``ConfigError`` for a bad setting), its model config built once."""

    data_root: str | Path
    category: str
    model: str
    dataset: str  # dataset name (models.mvtec.dataset_name(data_root)), readable, part of the key
    category_type: str | None = None  # "texture", "object", "custom"; None = read from data_root (not in the key)
    data_fingerprint: str = ""  # fingerprint.data_fingerprint(...).digest (grid.make_specs fills it in)
    image_size: ImageSize = DEFAULT_IMAGE_SIZE  # S or (H, W): what every image of the category is resized to
    in_channels: int = 3  # experiments use RGB (grayscale categories are replicated to 3 channels)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"latent_dim": 64}
    eval_config: EvalConfig = field(default_factory=EvalConfig)  # scoring rule, evaluation size, threshold rule
    val_fraction: float = DEFAULT_VAL_FRACTION  # of train/good held out as val (threshold + validation loss)
    config: ModelConfig = field(init=False, repr=False, compare=False)  # the model's, from the fields above

    def __post_init__(self) -> None:
        self.train.validate()
        self.eval_config.validate()
        config = model_config(self.model, image_size=self.image_size, in_channels=self.in_channels,
                              **self.model_overrides)
        object.__setattr__(self, "config", config)  # frozen: set once, here
        check_repair_support(MODELS[self.model], self.train.repair, f"model {self.model!r}")
        if self.category_type is None:
            object.__setattr__(self, "category_type", category_type(self.data_root, self.category))

    def train_dict(self) -> dict:
        """Everything that changes the trained weights, JSON-ready (hashed into ``train_hash``)."""
        return json.loads(json.dumps({
            "hash_version": HASH_VERSION,
            "dataset": self.dataset,
            "category": self.category,
            "data_fingerprint": self.data_fingerprint,  # the files' bytes ...
            "decode_version": DECODE_VERSION,  # ... and how they are read into pixels and masks
            "model": self.model,
            "model_config": self.config.to_dict(),  # image size, channels, widths, prior ...
            "train": self.train.result_dict(),  # epochs, batch, lr, schedule, clip, amp, seed ...
            "val_fraction": self.val_fraction,
        }, sort_keys=True))

    def config_dict(self) -> dict:
        """Everything that changes the row: the training and the evaluation (hashed into ``config_hash``)."""
        return {**self.train_dict(), "eval": json.loads(json.dumps(self.eval_config.to_dict())),
                "mask_version": MASK_VERSION}  # how the masks are read: evaluation only, never the checkpoint

    @cached_property
    def hashes(self) -> tuple[str, str]:
        """(train_hash, config_hash), computed once."""
        return config_hash(self.train_dict()), config_hash(self.config_dict())

    def train_hash(self) -> str:
        """Names the checkpoint: equal for two jobs that differ only in how they are evaluated."""
        return self.hashes[0]

    def config_hash(self) -> str:
        return self.hashes[1]

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


def load_category(spec: JobSpec, cache_dir=None) -> CategoryData:
    """The train / val / test splits of ``spec``'s category at its size, channels, seed and
    val fraction, decoded once (shared by the models of a grid); a ``DatasetError`` if it has
    no test images."""
    t0 = time.perf_counter()
    kw = dict(image_size=spec.image_size, in_channels=spec.in_channels, val_fraction=spec.val_fraction,
              seed=spec.train.seed, cache_dir=cache_dir)
    data = CategoryData(*(MVTecAD(spec.data_root, spec.category, split, **kw) for split in ("train", "val", "test")))
    data.seconds = time.perf_counter() - t0
    if data.test.labels.numel() == 0:
        raise DatasetError(f"category {spec.category!r} has no test images under "
                           f"{Path(spec.data_root) / spec.category / 'test'}; add some.")
    return data


@dataclass
class JobOutput:
    """What a job produced, before anything is written (a Ray task returns it to the driver;
    the grid writes it with ``write_output`` once its row is kept): the row, the checkpoint
    file's bytes (None for a job re-evaluated from its checkpoint), the side files' data and
    the job's wall time."""

    row: dict
    checkpoint: bytes | None
    evaluation: Evaluation  # without its maps (not written anywhere, nor shipped back by Ray)
    history: dict | None
    seconds: float = 0.0


def train_model(spec: JobSpec, data: CategoryData) -> tuple[AnomalyModel, dict]:
    """A freshly initialised model of ``spec`` (seeded), trained on ``data.train``; returns it
    (in eval mode) and its training history (``train.fit``)."""
    seed_everything(spec.train.seed)  # model init and everything after it
    model = MODELS[spec.model](spec.config)
    history = fit(model, data.train, data.val, spec.train, desc=spec.describe())
    return model, history


def compute_job(spec: JobSpec, data: CategoryData) -> JobOutput:
    """Train ``spec`` on ``data`` and evaluate it; returns the row and the checkpoint's bytes
    (with the row and the history); writes nothing."""
    start = time.perf_counter()
    device = resolve_device(spec.train.device)
    model = None
    try:
        reset_peak_memory(device)
        model, history = train_model(spec, data)
        evaluation = evaluate(model, data, spec.eval_config, batch_size=history["batch_size"], amp=spec.train.amp,
                              desc=spec.describe())
        training = training_columns(model, history, peak_memory=peak_memory_mb(device), data_seconds=data.seconds)
        row = make_row(spec, data, training, evaluation)
        checkpoint = checkpoint_bytes(model, name=spec.model, row=row, train_config=spec.train, history=history,
                                      training=training)
        return JobOutput(row=row, checkpoint=checkpoint, evaluation=without_maps(evaluation), history=history,
                         seconds=time.perf_counter() - start)
    finally:  # nothing of this job outlives it (models, optimiser state, device memory)
        del model
        release_memory(device)


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
        "epochs": history["epochs"],  # cfg.epochs, or more for min_steps
        "steps": history["steps"],  # optimiser steps taken
    }


def evaluate_checkpoint(spec: JobSpec, data: CategoryData, checkpoint: Path) -> JobOutput:
    """``spec`` evaluated on ``data`` from the ``checkpoint`` its training saved, without
    training; writes nothing. The training columns and history come from the checkpoint.
    ``CheckpointError`` if it is missing, damaged or of another config."""
    start = time.perf_counter()
    device = resolve_device(spec.train.device)
    model = load_checkpoint(checkpoint, model=spec.model, config=spec.config, device=device)
    try:
        stored = model.checkpoint
        training = stored.get("training") or {k: (stored.get("row") or {}).get(k) for k in TRAINING_COLUMNS}
        if training.get("steps") is None:  # a checkpoint older than the steps column: its history has them
            training = {**training, "steps": (stored.get("history") or {}).get("steps")}
        batch_size = int(training.get("batch_size") or spec.train.batch_size)
        evaluation = evaluate(model, data, spec.eval_config, batch_size=batch_size, amp=spec.train.amp,
                              desc=spec.describe())
        return JobOutput(row=make_row(spec, data, dict(training), evaluation), checkpoint=None,
                         evaluation=without_maps(evaluation), history=stored.get("history"),
                         seconds=time.perf_counter() - start)
    finally:
        del model
        release_memory(device)


def make_row(spec: JobSpec, data: CategoryData, training: dict, evaluation: Evaluation) -> dict:
    """The results row of a job (results.COLUMNS and EXTRA_COLUMNS)."""
    cfg, ev = spec.train, spec.eval_config
    config = spec.config_dict()
    shape = evaluation.eval_shape
    return {
        "dataset": spec.dataset,
        "category": spec.category,
        "category_type": spec.category_type,
        "model": spec.model,
        **evaluation.metrics,  # evaluate.METRIC_NAMES (the CSV orders the columns, results.COLUMNS)
        "threshold_rule": ev.threshold_rule,
        "score": ev.score.name,
        "epochs": cfg.epochs,
        "image_size": size_label(spec.image_size),  # "128", or "96x240" (height x width)
        "eval_size": shape if isinstance(shape, str) else size_label(shape),
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


def without_maps(evaluation: Evaluation) -> Evaluation:
    """The maps are not written anywhere: do not keep them (nor ship them back to the driver)."""
    return dataclasses.replace(evaluation, test_maps=torch.empty(0))


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_output(spec: JobSpec, data: CategoryData, output: JobOutput, *, checkpoint_dir, runs_dir) -> list[str]:
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
        writes += side_file_writes(spec, data, output, runs_dir)
    errors = [write_or_clear(what, path, write) for what, path, write in writes]
    return [e for e in errors if e is not None]


def side_file_writes(spec: JobSpec, data: CategoryData, output: JobOutput,
                     runs_dir) -> list[tuple[str, Path, Callable[[], object]]]:
    """The row's side files under ``runs_dir`` as (what, path, write) triples: the per-image
    scores, and the training curves when the output has a history (for a re-evaluated model,
    only if its training left none)."""
    evaluation = output.evaluation
    root = Path(data.test.root) / spec.category
    where = dict(dataset=spec.dataset, category=spec.category, model=spec.model)
    scores = runs.scores_path(runs_dir, **where, config_hash=spec.config_hash())
    writes = [("per-image scores", scores, lambda: runs.save_scores(
        scores, labels=data.test.labels.numpy(), test_scores=evaluation.test_scores.numpy(),
        val_scores=evaluation.val_scores.numpy(), pixel_pos=evaluation.pixel_pos, pixel_neg=evaluation.pixel_neg,
        test_paths=[Path(p).relative_to(root).as_posix() for p in data.test.paths]))]
    curves = runs.curves_path(runs_dir, **where, train_hash=spec.train_hash())
    trained = output.checkpoint is not None  # a re-evaluation's history is its training's
    if output.history is not None and (trained or not curves.is_file()):
        writes.append(("training curves", curves, lambda: runs.save_curves(curves, output.history)))
    return writes


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
