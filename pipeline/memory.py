"""Will a job fit in memory? An estimate of a model's training memory, made before any data
is read; the evaluation memory of the pixel metrics; and a job's measured peak.

A model too large for the machine (``--image-size 1024`` on a small GPU: the CAE's dense
bottleneck alone is then 270 M parameters) used to fail with a raw allocator error after its
data had been decoded, often minutes into a run. ``check_fits`` says so up front, in one
sentence, with a size or batch that fits.

The estimate (``estimate``) builds the model on PyTorch's ``meta`` device (shapes, no
storage, no arithmetic) and runs one training forward pass there on a batch of the job's
shape, counting the tensors autograd saves for the backward pass:

- parameters: 16 bytes each in training (float32 weight, gradient, AdamW's two moments);
- activations: the saved tensors (each counted once; parameters are not activations), plus
  twice the largest of them for what the backward pass holds at its peak (the gradient
  of the activation being processed and of its input);
- attention as a fused kernel saves it (q, k, v, output; not the tokens x tokens weights);
- on CUDA with bf16 autocast (``TrainConfig.amp``), activations at half that: the meta
  device knows no autocast, so the pass runs in float32, and bf16 stores half the bytes
  (an assumption: not yet measured on a GPU).

It leaves out the decoded images (N x C x S x S bytes: 3 MB per image at 1024 px) and the
framework's own overhead (CUDA context, allocator caching, libraries). Measured against the
real peak it is right to within a factor of two, not a promise (bench/README.md,
"Training-memory estimate"), so a job is refused only when the estimate is larger than ALL
the memory available; one the estimate barely lets through can still run out.

Evaluation has its own peak, in the CPU's memory whatever the device: the pixel metrics hold
every test map upsampled to the evaluation shape (float32), the masks read at it, and the
metrics' sorted copies and buffers: ``EVAL_BYTES_PER_PIXEL`` bytes per evaluation pixel
(measured: bench/README.md, "Evaluation memory"). ``check_evaluation`` refuses an
``--eval-size`` whose pixels cannot fit before any training, from the number of test files
and the evaluation shape alone (for ``original``, each test image's header size).

A job's own peak, for its row (``peak_memory_mb``), is measured from ``reset_peak_memory``
on: CUDA's peak counter, or the process's resident high-water mark on the CPU.
"""
from __future__ import annotations

import functools
import math
import os
import resource
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models import MODELS, ImageSize, image_hw, model_config, size_label
from models.errors import ConfigError
from models.mvtec import list_files

from .evaluate import eval_shape
from .sizes import kept_size
from .train import resolve_device

BYTES_PER_PARAMETER = 16  # float32 weight + gradient + AdamW exp_avg + exp_avg_sq
EVAL_BYTES_PER_PIXEL = 24  # the pixel metrics' peak per evaluation pixel: 20-22.5 measured, rounded up
SIZE_STEP = 16  # suggested image sizes are multiples of this (the CNNs' default stride; patch 8 divides it)


@dataclass(frozen=True)
class MemoryEstimate:
    model: str
    image_size: ImageSize  # S or (H, W)
    batch_size: int
    parameters: int  # number of parameters
    parameter_bytes: int  # with gradients and optimiser state
    activation_bytes: int  # saved for the backward pass, plus its peak

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient: CUDA, and CPU in float32) keeps
    for the backward pass: q, k, v, the output and one log-sum-exp per query, never the
    (tokens x tokens) weights that the meta device's plain implementation would save."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1]))
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: the estimate runs no backward pass
        raise NotImplementedError


def _fused_attention_forward(mha: nn.MultiheadAttention, query, key, value, **_):
    """nn.MultiheadAttention's forward (self-attention, no masks) with _FusedAttention inside.
    The meta device cannot run the fused kernels, and a function mode never sees the
    attention call inside ``F.multi_head_attention_forward``, so the estimate's throwaway copy
    of the model gets this forward on each attention module instead."""
    x = query if mha.batch_first else query.transpose(0, 1)  # (B, T, D)
    b, t, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
    out = _FusedAttention.apply(q, k, v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
    out = mha.out_proj(out)
    return (out if mha.batch_first else out.transpose(0, 1)), None


def _build_on_meta(name: str, config):
    """The model with meta tensors. A model whose constructor computes with values (the GRF
    prior's spectrum calls ``.item()``) is built on the CPU and then moved: only models whose
    parameters do not grow with the image size do that today (VAE-GRF: convolutions only)."""
    try:
        with torch.device("meta"):
            return MODELS[name](config)
    except (RuntimeError, NotImplementedError):
        with torch.random.fork_rng(devices=[]):  # its initialisation must not move the global RNG
            return MODELS[name](config).to("meta")


def estimate(name: str, *, image_size: ImageSize, batch_size: int, in_channels: int = 3, overrides: dict | None = None,
             half_activations: bool = False) -> MemoryEstimate:
    """Training memory of model ``name`` at ``image_size`` (S or (H, W)) with batches of ``batch_size``
    (see the module docstring). ``half_activations``: bf16 autocast (CUDA with amp)."""
    config = model_config(name, image_size=image_size, in_channels=in_channels, **(overrides or {}))
    model = _build_on_meta(name, config).train()
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            m.forward = functools.partial(_fused_attention_forward, m)
    params = list(model.parameters())
    param_ids = {id(p) for p in params}
    saved: dict[int, torch.Tensor] = {}  # id -> tensor (kept alive, so ids stay unique; meta: no storage)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in param_ids:
            saved[id(t)] = t
        return t

    x = torch.empty(batch_size, in_channels, *image_hw(image_size), device="meta")  # (B, C, H, W)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        try:
            model.loss(x)
        except (RuntimeError, NotImplementedError):
            # A loss the meta device cannot run (the GRF prior's KL turns autocast off by
            # device type, and there is no autocast for "meta"): the reconstruction alone,
            # which holds the image-sized activations; the latent's loss terms are small next to them.
            saved.clear()
            model.reconstruct(x)
    sizes = [t.numel() * t.element_size() for t in saved.values()]
    activations = sum(sizes) + 2 * max(sizes, default=0) + x.numel() * x.element_size()
    if half_activations:
        activations //= 2
    n_params = sum(p.numel() for p in params)
    return MemoryEstimate(model=name, image_size=image_size, batch_size=batch_size, parameters=n_params,
                          parameter_bytes=BYTES_PER_PARAMETER * n_params, activation_bytes=int(activations))


def available_bytes(device: torch.device) -> int | None:
    """Memory a job can use on ``device``: CUDA's free memory plus what PyTorch's allocator
    holds unused; elsewhere the system's available memory (Linux MemAvailable, else the
    physical memory). None when it cannot be told (then nothing is refused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    """Bytes as '4.3 GiB' (or '750 MiB' under 1 GiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _millions(n: int) -> str:
    return f"{n / 1e6:,.0f} M" if n >= 1e7 else f"{n / 1e6:.1f} M"


def _smaller_sizes(image_size: ImageSize) -> list[ImageSize]:
    """Sizes below ``image_size`` with its aspect, smallest first: the short side in steps of
    SIZE_STEP, the long side following it as ``--aspect keep`` would choose it."""
    height, width = image_hw(image_size)
    return [kept_size(width / height, s, SIZE_STEP) for s in range(SIZE_STEP, min(height, width), SIZE_STEP)]


def _largest_size(name: str, image_size: ImageSize, batch_size: int, budget: int, **kw) -> ImageSize | None:
    """The largest valid size below ``image_size`` (same aspect, sides multiples of SIZE_STEP)
    whose estimate fits ``budget`` (memory grows with the size: a binary search); None if not
    even the smallest one fits."""
    sizes = []
    for s in _smaller_sizes(image_size):
        try:
            model_config(name, image_size=s, in_channels=kw.get("in_channels", 3), **(kw.get("overrides") or {}))
        except ConfigError:  # not a multiple of this model's stride / patch
            continue
        sizes.append(s)
    lo, hi, best = 0, len(sizes) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if estimate(name, image_size=sizes[mid], batch_size=batch_size, **kw).total_bytes <= budget:
            best, lo = sizes[mid], mid + 1
        else:
            hi = mid - 1
    return best


def check_fits(name: str, *, image_size: ImageSize, batch_size: int, device: torch.device, amp: bool = True,
               in_channels: int = 3, overrides: dict | None = None,
               available: int | None = None) -> MemoryEstimate | None:
    """Raise ConfigError, naming the estimate and a size or batch that fits, when training
    ``name`` at ``image_size`` px with batches of ``batch_size`` needs more memory than
    ``device`` has available (``available``: given, e.g. by a test; default ``available_bytes``).
    Returns the estimate (None when it could not be made)."""
    kw = dict(in_channels=in_channels, overrides=overrides, half_activations=device.type == "cuda" and amp)
    try:
        est = estimate(name, image_size=image_size, batch_size=batch_size, **kw)
    except Exception as e:  # a model the meta device cannot run: the estimate is a courtesy, not a gate
        warnings.warn(f"cannot estimate the training memory of {name} ({type(e).__name__}: {e}); not checked.",
                      stacklevel=2)
        return None
    budget = available_bytes(device) if available is None else available
    if budget is None or est.total_bytes <= budget:
        return est
    # Activations grow with the batch, parameters do not: the largest batch that fits at this size.
    per_image = est.activation_bytes / batch_size
    max_batch = math.floor((budget - est.parameter_bytes) / per_image) if budget > est.parameter_bytes else 0
    size = _largest_size(name, image_size, batch_size, budget, **kw)
    options = []
    if size is not None:
        options.append(f"--image-size {size_label(size)} or less")
    if max_batch >= 1:
        options.append(f"--batch-size {max_batch} or less")
    if not options and batch_size > 1:
        size = _largest_size(name, image_size, 1, budget, **kw)
        if size is not None:
            options.append(f"--image-size {size_label(size)} or less with --batch-size 1")
    what = " or ".join(options) if options else "a machine with more memory (or a smaller model: --set)"
    raise ConfigError(
        f"{name} at {size_label(image_size)} px with batch {batch_size} needs about {gib(est.total_bytes)} to train "
        f"({_millions(est.parameters)} parameters: {gib(est.parameter_bytes)} with their gradients and optimiser "
        f"state; activations {gib(est.activation_bytes)}), more than the {gib(budget)} available on {device.type}; "
        f"use {what}."
    )


def check_jobs(specs) -> None:
    """``check_fits`` for each distinct model setup among the jobs (``job.JobSpec``) that will
    train, on their device; jobs already in the CSV or evaluated from a checkpoint are not
    checked (re-running a finished grid on a smaller machine is fine)."""
    seen = set()
    for s in specs:
        setup = (s.model, s.image_size, s.in_channels, s.train.batch_size, s.train.device, s.train.amp,
                 tuple(sorted((k, repr(v)) for k, v in s.model_overrides.items())))
        if setup in seen:
            continue
        seen.add(setup)
        check_fits(s.model, image_size=s.image_size, batch_size=s.train.batch_size,
                   device=resolve_device(s.train.device), amp=s.train.amp, in_channels=s.in_channels,
                   overrides=s.model_overrides)


def _image_sizes(listing) -> list[tuple[int, int]] | None:
    """(width, height) of each test image of a category (``models.mvtec.list_files``) from its header
    (``original``), or None when one cannot be read or is a link the loader refuses (the loader names
    that file when it gets there; a link leaving the data root is never read)."""
    sizes = []
    for path in listing.test:
        if path in listing.refused:
            return None
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
    return sizes


def evaluation_pixels(spec) -> tuple[int, int]:
    """(test images, evaluation pixels) of a job (``job.JobSpec``): the number of test files
    times the evaluation shape's pixels, or for ``original`` their own sizes summed."""
    shape = eval_shape(spec.eval_config.eval_size, spec.image_size)
    listing = list_files(spec.data_root, spec.category)
    if shape == "original":
        sizes = _image_sizes(listing) or []
        return len(sizes), sum(w * h for w, h in sizes)
    height, width = image_hw(shape)
    return len(listing.test), len(listing.test) * height * width


def _largest_eval_size(n_images: int, image_size: ImageSize, budget: int) -> int | None:
    """The largest evaluation size (a multiple of SIZE_STEP) whose shape for ``n_images`` fits ``budget``."""
    height, width = image_hw(image_size)
    aspect = max(height, width) / min(height, width)  # the shape has S^2 * aspect pixels (S the short side)
    side = math.isqrt(int(budget / (EVAL_BYTES_PER_PIXEL * max(n_images, 1) * aspect)))
    side -= side % SIZE_STEP
    return side if side >= 16 else None


def check_evaluation(specs, available: int | None = None) -> None:
    """Raise ConfigError, before any training, when evaluating a job (``job.JobSpec``) at its
    evaluation size would need more than the CPU memory available (the pixel metrics run on the
    CPU); each (category, evaluation shape) is checked once. ``available``: given (a test), else ``available_bytes``."""
    seen = set()
    for s in specs:
        setup = (str(s.data_root), s.category, s.image_size, s.eval_config.eval_size)
        if setup in seen:
            continue
        seen.add(setup)
        n_images, pixels = evaluation_pixels(s)
        need = EVAL_BYTES_PER_PIXEL * pixels
        budget = available_bytes(torch.device("cpu")) if available is None else available
        if budget is None or need <= budget:
            continue
        size = _largest_eval_size(n_images, s.image_size, budget)
        shape = eval_shape(s.eval_config.eval_size, s.image_size)
        at = "their own sizes" if shape == "original" else f"{size_label(shape)} px"
        what = f"--eval-size {size} or less" if size else "a machine with more memory"
        raise ConfigError(
            f"evaluating {s.category!r} at --eval-size {s.eval_config.eval_size} needs about {gib(need)} of memory "
            f"({n_images} test images at {at}: their maps, masks and the pixel metrics' buffers, about "
            f"{EVAL_BYTES_PER_PIXEL} bytes per pixel), more than the {gib(budget)} available; use {what}."
        )


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
