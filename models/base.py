"""What every model shares: the config fields common to all, and the scoring interface.

A model subclasses ``AnomalyModel`` and implements two methods:

- ``loss(x, target=None)``: dict with ``"loss"`` (the scalar to minimise) and its named terms;
  the reconstruction of ``x`` is compared with ``target`` (None = ``x``: plain reconstruction;
  repair training passes the clean image while ``x`` carries synthetic defects);
- ``reconstruct(x)``: the deterministic reconstruction used at test time (a VAE decodes
  the posterior mean, never a sample).

``anomaly_map`` and ``anomaly_score`` come from here, so every model is scored the same way
(see ``scoring.py``). The scoring rule is not part of the model's config: it is an
evaluation setting (``scoring.ScoreConfig``), so the same weights can be scored many ways.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from . import scoring
from .errors import ConfigError

DEFAULT_IMAGE_SIZE = 128  # px; the one default of every image_size (configs, dataset, grid, CLI)
MIN_SIDE = 16  # px; the smallest side any model takes

# An input size: one int S for S x S (the default, and how a square size is always stored, so
# square configs hash as they always did) or (height, width) for a rectangle.
ImageSize = int | tuple[int, int]


def canonical_size(size, *, what: str = "image_size") -> ImageSize:
    """``size`` as an ``ImageSize``: S stays S, (H, W) or [H, W] becomes the tuple (H, W), and a
    square (S, S) becomes S (one spelling per size, so one hash per size). Raises ConfigError
    for anything else, naming ``what``."""
    sides = list(size) if isinstance(size, (tuple, list)) else [size]
    if len(sides) not in (1, 2) or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                           for s in sides):
        raise ConfigError(f"{what} must be a whole number of px (S for S x S) or a height and width (H x W), "
                          f"got {size!r}.")
    sides = [int(s) for s in sides]
    return sides[0] if len(set(sides)) == 1 else (sides[0], sides[1])


def image_hw(size: ImageSize) -> tuple[int, int]:
    """(height, width) of an ``ImageSize``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_label(size: ImageSize) -> str:
    """'128' for a square, '96x240' (height x width) for a rectangle: the row's ``image_size``."""
    h, w = image_hw(size)
    return str(h) if h == w else f"{h}x{w}"


@dataclass(kw_only=True)
class ModelConfig:
    # Input size in px: S (S x S) or (height, width); each side a multiple of the model's
    # stride / patch size (``size_multiple``).
    image_size: ImageSize = DEFAULT_IMAGE_SIZE
    in_channels: int = 3  # 1 (grayscale) or 3 (RGB)

    def __post_init__(self):
        # A JSON round trip (checkpoint, CSV) turns (H, W) into [H, W]; (S, S) is stored as S.
        self.image_size = canonical_size(self.image_size)

    @property
    def height(self) -> int:
        return image_hw(self.image_size)[0]

    @property
    def width(self) -> int:
        return image_hw(self.image_size)[1]

    def size_multiple(self) -> int:
        """Each side of the input must be a multiple of this (the encoder's stride, a patch size)."""
        return 1

    def validate(self) -> None:
        """Raise ConfigError for values no model can use. Subclasses extend it."""
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels}.")
        if min(self.height, self.width) < MIN_SIDE:
            raise ConfigError(f"image_size must be at least {MIN_SIDE} px on each side, got "
                              f"{size_label(self.image_size)}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """The modules in eval mode inside the block; each one's previous mode is restored after it,
    also when the block raises."""
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


def accepts_target(model_cls) -> bool:
    """Whether ``model_cls.loss`` (a class or a model) takes ``target``: repair training needs it,
    a model written with ``loss(x)`` alone still trains without repair."""
    params = inspect.signature(model_cls.loss).parameters
    return "target" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def loss_target(x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """What a loss compares the reconstruction of ``x`` with: ``target``, or ``x`` itself when None."""
    if target is None:
        return x
    assert target.shape == x.shape, f"target {tuple(target.shape)} and input {tuple(x.shape)} differ in shape"
    return target


class AnomalyModel(nn.Module):
    """Base of the four models: a reconstruction model scored by its residual."""

    config_class: type[ModelConfig] = ModelConfig
    # Display name in figures, tables and the report; a subclass that sets none shows its class name.
    label: ClassVar[str] = "AnomalyModel"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "label" not in cls.__dict__:
            cls.label = cls.__name__

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training loss of ``x``'s reconstruction against ``target`` (``loss_target``: None = x)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    @torch.inference_mode()
    def anomaly_map(self, x: torch.Tensor, score: scoring.ScoreConfig | None = None) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H, W) float32 map, larger = more anomalous, under the
        scoring rule ``score`` (default ``ScoreConfig()``).

        Always computed in eval mode without gradients; the previous mode is restored.
        """
        score = score or scoring.ScoreConfig()
        with eval_mode(self):
            x_hat = self.reconstruct(x)
        return scoring.anomaly_map(x, x_hat, score_map=score.score_map, score_sigma=score.score_sigma)

    @torch.inference_mode()
    def anomaly_score(self, x: torch.Tensor, score: scoring.ScoreConfig | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B,) image scores under the scoring rule ``score`` (default ``ScoreConfig()``)."""
        score = score or scoring.ScoreConfig()
        return scoring.reduce_map(self.anomaly_map(x, score), score_reduce=score.score_reduce,
                                  score_topk=score.score_topk)
