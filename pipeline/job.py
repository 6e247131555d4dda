"""One job: train one model on one category, evaluate it, record the row and the checkpoint.

A job is three steps, each a function with one job::

    model, history = train_model(spec, data)          # seeded init + fit()
    evaluation = evaluate.evaluate(model, data, ...)   # maps, scores, metrics
    row = record(spec, data, model, history, evaluation, ...)   # the row; saves the checkpoint

``run_job`` chains them (the grid calls it once per job). ``JobSpec`` says everything that
defines a job; its ``config_hash`` is part of the results row's key (docs/design.md, "The
cache key").
"""
from __future__ import annotations

import gc
import hashlib
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from models import DEFAULT_IMAGE_SIZE, MODELS, AnomalyModel, ModelConfig, model_config
from models.errors import ConfigError, DatasetError
from models.mvtec import DEFAULT_VAL_FRACTION, MVTecAD, category_type

from . import metrics
from .checkpoints import DEFAULT_CHECKPOINT_DIR, checkpoint_path, save_checkpoint
from .evaluate import Evaluation, evaluate
from .train import TrainConfig, fit, resolve_device, seed_everything

HASH_VERSION = 1  # bump when the meaning of a config changes without its fields changing


@dataclass(kw_only=True)
class JobSpec:
    """Everything that defines one (model, category) job."""

    data_root: str | Path
    category: str
    model: str
    dataset: str  # dataset name (models.mvtec.dataset_name(data_root)), part of the key
    image_size: int = DEFAULT_IMAGE_SIZE
    in_channels: int = 3  # experiments use RGB (grayscale categories are replicated to 3 channels)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"latent_dim": 64}
    threshold_rule: str = metrics.DEFAULT_THRESHOLD_RULE  # see metrics.val_threshold
    val_fraction: float = DEFAULT_VAL_FRACTION  # of train/good held out as val (threshold + validation loss)

    def model_config(self) -> ModelConfig:
        return model_config(self.model, image_size=self.image_size, in_channels=self.in_channels,
                            **self.model_overrides)

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

    def describe(self) -> str:
        return f"{self.model} on {self.category!r}"


def config_hash(config: dict) -> str:
    """12 hex digits of the SHA-256 of the config's canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class CategoryData:
    train: MVTecAD
    val: MVTecAD
    test: MVTecAD
    seconds: float = 0.0  # time to decode (or fetch from cache) the three splits


def load_category(root, category: str, *, image_size: int = DEFAULT_IMAGE_SIZE, in_channels: int = 3, seed: int = 0,
                  val_fraction: float = DEFAULT_VAL_FRACTION, cache_dir=None) -> CategoryData:
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


def record(spec: JobSpec, data: CategoryData, model: AnomalyModel, history: dict, evaluation: Evaluation, *,
           checkpoint_dir=DEFAULT_CHECKPOINT_DIR, peak_memory: float = float("nan")) -> dict:
    """Step 3: the results row of a finished job; saves the model's checkpoint (with the row)
    under ``checkpoint_dir`` unless that is None."""
    cfg = spec.train
    config = spec.config_dict()
    key_hash = config_hash(config)
    row = {
        "dataset": spec.dataset,
        "category": spec.category,
        "category_type": category_type(spec.data_root, spec.category),
        "model": spec.model,
        **evaluation.metrics,  # evaluate.METRIC_NAMES (the CSV orders the columns, results.COLUMNS)
        "threshold_rule": spec.threshold_rule,
        "score": model.config.score_name,
        "epochs": cfg.epochs,
        "image_size": spec.image_size,
        "seed": cfg.seed,
        "train_seconds": history["seconds"],
        "infer_ms_per_image": evaluation.infer_ms_per_image,
        "params": sum(p.numel() for p in model.parameters()),
        "config_hash": key_hash,
        "device": history["device"],
        "torch_version": torch.__version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "peak_memory_mb": peak_memory,
        "n_train": len(data.train.images),
        "n_val": len(data.val.images),
        "n_test": len(data.test.images),
        "train_loss": history["train_loss"][-1],
        "val_loss": history["val_loss"][-1],
        "batch_size": history["batch_size"],
        "lr": cfg.lr,
        "data_seconds": data.seconds,
        "score_seconds": evaluation.score_seconds,
        "metrics_seconds": evaluation.metrics_seconds,
        "config_json": json.dumps(config, sort_keys=True),
    }
    if checkpoint_dir is not None:
        path = checkpoint_path(checkpoint_dir, dataset=spec.dataset, category=spec.category, model=spec.model,
                               config_hash=key_hash)
        save_checkpoint(path, model, name=spec.model, row=row, train_config=cfg)
    return row


def run_job(spec: JobSpec, data: CategoryData | None = None, *, checkpoint_dir=DEFAULT_CHECKPOINT_DIR,
            cache_dir=None, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train, evaluate and record one (model, category); returns the results row.

    ``data`` lets a grid decode a category once for all its models; without it the category
    is loaded here.
    """
    spec.validate()
    device = resolve_device(spec.train.device)
    if data is None:
        data = load_category(spec.data_root, spec.category, image_size=spec.image_size, in_channels=spec.in_channels,
                             seed=spec.train.seed, val_fraction=spec.val_fraction, cache_dir=cache_dir)
    if data.test.labels.numel() == 0:
        raise DatasetError(f"category {spec.category!r} has no test images under "
                           f"{Path(spec.data_root) / spec.category / 'test'}; add some.")
    reset_peak_memory(device)
    model = None
    try:
        model, history = train_model(spec, data, on_epoch=on_epoch)
        evaluation = evaluate(model, data, threshold_rule=spec.threshold_rule, batch_size=history["batch_size"],
                              amp=spec.train.amp, desc=spec.describe())
        return record(spec, data, model, history, evaluation, checkpoint_dir=checkpoint_dir,
                      peak_memory=peak_memory_mb(device))
    finally:  # nothing of this job outlives it (models, optimiser state, device memory)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
