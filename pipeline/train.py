"""Training: the config, device choice, seeding and the optimiser loop (checkpoints: checkpoints.py).

``fit`` trains any ``AnomalyModel`` on a dataset's cached uint8 tensor (``ds.images``,
N x C x S x S, decoded once by ``MVTecAD``): each epoch walks a seeded permutation of the
indices in batches gathered on the device (pipeline/batches.py).

On CUDA: the uint8 set is copied to the GPU once (or gathered into pinned memory and
copied non-blocking when it is too large), bf16 autocast (``amp``), fused AdamW, optional
``torch.compile`` of the loss. On CPU/MPS these are off and the same code runs. channels_last
(NHWC) is used for the convolutional models on CUDA and on CPU: oneDNN's CPU convolutions are
also faster in NHWC (bench/README.md, "Speed").

With ``repair`` > 0 a share of each batch gets synthetic defects (pipeline/defects.py) and the
model learns to reconstruct the clean image from it (``model.loss(x_in, target=x)``); with
``min_steps`` a small category trains for as many epochs as that many optimiser steps take.

``fit`` reports each finished epoch to an optional ``on_epoch(epoch, history)`` callback
(progress displays, tests that need a job to be mid-training at a known moment).
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.base import accepts_target, eval_mode
from models.errors import ConfigError, DatasetError, TrainingError

from .augment import AUGMENTATIONS, augment_batch
from .batches import BatchSource, autocast, batch_indices, prefers_channels_last
from .defects import check_repair, corrupt

DEVICES = ("auto", "cpu", "cuda", "mps")
# torch seeds its CPU generator with the low 32 bits of the seed only (mt19937), so seeds
# 2**32 apart give identical runs under different config hashes; larger seeds overflow.
MAX_SEED = 2**32 - 1
LR_SCHEDULES = ("cosine", "constant")
# Added to the seed for the synthetic-defect generator: its own stream, apart from the data
# order's generator (seeded with the seed itself) and torch's global RNG (model init).
DEFECT_SEED_OFFSET = 7919


@dataclass(kw_only=True)
class TrainConfig:
    # 25 epochs x batch 8: MVTec-sized categories (20-400 images) are short of optimiser steps,
    # not of epochs; batch 32 gave 30 updates in 30 epochs on a 23-image category. Measured in
    # bench/README.md ("Accuracy"); the smallest categories get more epochs from ``min_steps``.
    epochs: int = 25  # passes over the train split
    batch_size: int = 8  # clamped (with a warning) to the number of training images
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 = plain Adam)
    grad_clip: float = 1.0  # max global gradient norm; 0 = off (keeps early VAE steps sane)
    lr_schedule: str = "cosine"  # "cosine" decays lr to 1% over all steps; "constant"
    seed: int = 0  # seeds python, numpy, torch, model init and the data order
    device: str = "auto"  # "auto" = cuda, then mps, then cpu
    amp: bool = True  # bf16 autocast, on CUDA only (ignored elsewhere)
    channels_last: bool = True  # NHWC memory format for conv models (faster on CUDA and on CPU)
    compile: bool = False  # torch.compile the loss (slow first epoch; worth it on long GPU runs)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default (all cores)
    augment: str = "none"  # per-batch random symmetries (pipeline/augment.py): "none", "flip", "dihedral" (textures)
    progress: bool = True  # tqdm bar per job (epoch, loss)
    # The budget in optimiser steps: a category with few images trains for more epochs until it
    # has taken at least this many steps (epochs = max(epochs, ceil(min_steps / steps per epoch))).
    # 200: dev grid's 23 images get 201 steps instead of 75 (VAE-GRF image AUROC 0.58 -> 0.85 over
    # 3 seeds), the demo's 54 get 203 instead of 175 (+16 % time, no metric moves beyond its seed
    # spread), and categories of 64 or more images train as before (bench/README.md, "Step budget").
    min_steps: int = 200  # 0 = the epochs alone
    # Repair training: this share of each batch gets synthetic defects (pipeline/defects.py) and
    # the model learns to reconstruct the clean image from it; 0 = plain reconstruction.
    repair: float = 0.0
    defects: str = "mixed"  # what fills the defects: "mixed", "texture", "patch", "colour" (with repair > 0)

    # Fields that do not change the trained model or its scores: left out of config_hash.
    RESULT_NEUTRAL = ("device", "num_threads", "progress", "compile")

    def validate(self) -> None:
        def bad(what: str):
            raise ConfigError(f"training: {what}.")

        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad(f"lr must be a positive number, got {self.lr!r}")
        if not self.weight_decay >= 0 or not self.grad_clip >= 0:
            bad(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay!r} and {self.grad_clip!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            bad(f"seed must be a whole number from 0 to {MAX_SEED} (torch uses only the low 32 bits, so a larger "
                f"seed would repeat a smaller seed's results), got {self.seed!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad(f"lr_schedule {self.lr_schedule!r} is unknown; valid: {', '.join(LR_SCHEDULES)}")
        try:  # unknown or unavailable (cuda without a GPU): refused now, before any data is read
            resolve_device(self.device)
        except ConfigError as e:
            bad(str(e).rstrip("."))
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            bad(f"num_threads must be a whole number >= 0, got {self.num_threads!r}")
        if self.augment not in AUGMENTATIONS:
            bad(f"augment {self.augment!r} is unknown; valid: {', '.join(AUGMENTATIONS)}")
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 0:
            bad(f"min_steps must be a whole number >= 0 (0 = the epochs alone), got {self.min_steps!r}")
        try:
            check_repair(self.repair, self.defects)
        except ConfigError as e:
            bad(str(e).rstrip("."))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """The fields that change results (hashed into the row's config_hash)."""
        result = {k: v for k, v in self.to_dict().items() if k not in self.RESULT_NEUTRAL}
        # Fields added after rows were written are hashed only when set: at their off values
        # the training is the one before they existed, so those rows (the committed CSV) keep
        # their keys. The defect kind changes nothing while repair is off.
        if self.min_steps == 0:
            del result["min_steps"]
        if self.repair == 0:
            del result["repair"], result["defects"]
        else:
            result["repair"] = float(self.repair)  # 1 and 1.0 are one setting, one key
        return result


def planned_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The epochs a job trains for: ``cfg.epochs``, or more when ``cfg.min_steps`` needs them."""
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(steps_per_epoch, 1)))


def check_repair_support(model_cls, repair: float, what: str) -> None:
    """A ``ConfigError`` naming ``what`` (the model) when repair training is asked of a model whose
    ``loss`` takes no target (a model written before repair training existed)."""
    if repair and not accepts_target(model_cls):
        raise ConfigError(
            f"{what} cannot be trained with repair {repair:g}: its loss(x) takes no target (the clean "
            f"image a corrupted input is compared with); give it loss(x, target=None) as the README's "
            f"'Adding a model' says, or set repair to 0."
        )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices): same machine + same seed = same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, then mps, then cpu; an unavailable request is a ConfigError."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ConfigError(f"device {name!r} is unknown; valid: {', '.join(DEVICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but no CUDA GPU is available; use --device auto or cpu.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} was requested but MPS is not available; use --device auto or cpu.")
    return torch.device(name)


@torch.inference_mode()
def evaluate_loss(model, source: BatchSource, *, batch_size: int, amp: bool = True) -> float:
    """Mean loss over a whole split in eval mode, batched, without gradients."""
    if len(source) == 0:
        return math.nan
    total = torch.zeros((), device=source.device, dtype=torch.float64)
    with eval_mode(model):
        for idx in batch_indices(len(source), batch_size):
            with autocast(source.device, amp):
                total += model.loss(source.batch(idx))["loss"].double() * idx.numel()
    return total.item() / len(source)


def _training_images(train_ds, desc: str) -> int:
    """The number of training images of ``train_ds``; a ``DatasetError`` naming ``desc`` when
    there are fewer than 2."""
    n = int(train_ds.images.shape[0])
    if n >= 2:
        return n
    # A dataset that held some of train/good out as val says so: "found 1" of a folder of 2 is a riddle.
    n_val = getattr(train_ds, "n_val", 0) if getattr(train_ds, "split", "train") == "train" else 0
    if n_val:
        raise DatasetError(
            f"{desc}: training needs at least 2 images, but train/good has {n + n_val} images; {n_val} "
            f"{'was' if n_val == 1 else 'were'} held out as val (val_fraction {train_ds.val_fraction:g}), "
            f"leaving {n} for training; add images to train/good."
        )
    raise DatasetError(
        f"{desc}: training needs at least 2 images in the train split, found {n}; add images to train/good."
    )


def _batch_size(cfg: TrainConfig, n: int, desc: str) -> int:
    """``cfg.batch_size``, clamped with a warning to the ``n`` training images."""
    if cfg.batch_size > n:
        warnings.warn(f"{desc}: batch_size {cfg.batch_size} is larger than the {n} training images; using {n}.",
                      stacklevel=3)
    return min(cfg.batch_size, n)


def _place_model(model, cfg: TrainConfig) -> tuple[torch.device, bool]:
    """Move ``model`` to ``cfg``'s device (NHWC where it is faster) and set the CPU threads;
    returns the device and whether batches are NHWC (channels_last) too."""
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    channels_last = cfg.channels_last and prefers_channels_last(model, device)
    model.to(device)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest convolutions once
        torch.backends.cudnn.benchmark = True
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return device, channels_last


def _lr_scheduler(optimiser: torch.optim.Optimizer, lr_schedule: str, total_steps: int):
    """The per-step learning-rate factor: "cosine" from 1 down to 0.01 over ``total_steps``, else 1."""
    if lr_schedule == "cosine":
        schedule = lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    else:
        schedule = lambda s: 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)


def _train_epoch(model, source: BatchSource, batches: list[torch.Tensor], *, loss_fn, optimiser, scheduler,
                 cfg: TrainConfig, history: dict, defects: torch.Generator | None = None) -> dict[str, float]:
    """One pass of AdamW steps over ``batches`` (index batches of ``source``); returns the epoch's
    mean of each loss term. Adds the batching time and the steps to ``history``. With
    ``cfg.repair``, ``defects`` (a generator on the device) draws the synthetic defects."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for idx in batches:
        t0 = time.perf_counter()
        x = source.batch(idx)
        x = augment_batch(x, cfg.augment)  # a no-op for "none"
        x_in = corrupt(x, cfg.repair, defects, kinds=cfg.defects)[0] if cfg.repair else x
        history["data_seconds"] += time.perf_counter() - t0
        with autocast(source.device, cfg.amp):
            out = loss_fn(x_in, target=x) if cfg.repair else loss_fn(x)  # repair: the clean x is the target
        loss = out["loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimiser.step()
        scheduler.step()
        # Accumulate on the device: no host sync per step, one per epoch.
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * idx.numel()
        seen += idx.numel()
        history["steps"] += 1
    return {k: float(v) / seen for k, v in sums.items()}


def _record_epoch(history: dict, means: dict[str, float], val_loss: float) -> None:
    """Append one finished epoch's losses (``_train_epoch``'s means, the val loss) to ``history``."""
    history["train_loss"].append(means["loss"])
    history["val_loss"].append(val_loss)
    history["terms"] = means
    for k, v in means.items():
        history["term_curves"].setdefault(k, []).append(v)


def fit(model, train_ds, val_ds=None, cfg: TrainConfig | None = None, *, desc: str | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``model`` on ``train_ds.images`` with AdamW; returns the history.

    ``cfg`` is taken as valid: ``TrainConfig.validate`` runs where a job's config is made
    (docs/design.md, "Style": each setting is validated in one place).
    ``on_epoch(epoch, history)`` is called after each epoch (1-based) with the history so far.

    history: train_loss / val_loss per epoch, terms (last epoch's mean of each loss term),
    term_curves (each loss term's mean per epoch, e.g. recon and kl: the training curves kept
    with the checkpoint), seconds, data_seconds (batch gathering, conversion, synthetic
    defects), batch_size, steps (optimiser steps taken), epochs (epochs run: ``planned_epochs``,
    ``cfg.epochs`` unless ``cfg.min_steps`` needs more), device. With ``cfg.repair`` the train
    losses are those of the repaired batches; the val loss is always on clean val images.
    A non-finite loss raises ``TrainingError`` naming ``desc`` (model and category) and the epoch.
    """
    cfg = cfg or TrainConfig()
    desc = desc or f"{type(model).__name__.lower()} on {getattr(train_ds, 'category', '?')!r}"
    check_repair_support(type(model), cfg.repair, desc)
    n = _training_images(train_ds, desc)
    batch_size = _batch_size(cfg, n, desc)

    device, channels_last = _place_model(model, cfg)
    source = BatchSource(train_ds.images, device, channels_last=channels_last)
    val_source = None
    if val_ds is not None and len(val_ds.images):
        val_source = BatchSource(val_ds.images, device, channels_last=channels_last)

    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    steps_per_epoch = len(batch_indices(n, batch_size, torch.Generator().manual_seed(0)))
    epochs = planned_epochs(cfg, steps_per_epoch)
    scheduler = _lr_scheduler(optimiser, cfg.lr_schedule, epochs * steps_per_epoch)  # spans every step taken
    loss_fn = torch.compile(model.loss) if cfg.compile else model.loss
    generator = torch.Generator().manual_seed(cfg.seed)  # the data order, independent of model RNG use
    defects = torch.Generator(device=device).manual_seed(cfg.seed + DEFECT_SEED_OFFSET) if cfg.repair else None

    history = {"train_loss": [], "val_loss": [], "terms": {}, "term_curves": {}, "seconds": 0.0, "data_seconds": 0.0,
               "batch_size": batch_size, "steps": 0, "device": str(device)}
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not cfg.progress, leave=False,
               dynamic_ncols=True)
    try:
        for epoch in bar:
            means = _train_epoch(model, source, batch_indices(n, batch_size, generator), loss_fn=loss_fn,
                                 optimiser=optimiser, scheduler=scheduler, cfg=cfg, history=history, defects=defects)
            if not math.isfinite(means["loss"]):
                raise TrainingError(
                    f"{desc}: the training loss became {means['loss']} at epoch {epoch}; "
                    f"lower the learning rate (now {cfg.lr:g}) or keep gradient clipping on."
                )
            val_loss = evaluate_loss(model, val_source, batch_size=batch_size, amp=cfg.amp) if val_source else math.nan
            _record_epoch(history, means, val_loss)
            bar.set_postfix(loss=f"{means['loss']:.4g}", val=f"{val_loss:.4g}")
            if on_epoch is not None:
                on_epoch(epoch, history)
    finally:
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        history["seconds"] = time.perf_counter() - start
        history["epochs"] = len(history["train_loss"])  # epochs run: planned_epochs, or fewer if it raised
        del optimiser, scheduler, loss_fn, source, val_source  # nothing outlives the job
    model.eval()
    return history
