"""What every model shares: the config fields common to all, and the scoring interface.

A model subclasses ``AnomalyModel`` and implements two methods:

- ``loss(x)``: dict with ``"loss"`` (the scalar to minimise) and its named terms;
- ``reconstruct(x)``: the deterministic reconstruction used at test time (a VAE decodes
  the posterior mean, never a sample).

``anomaly_map`` and ``anomaly_score`` come from here, so every model is scored the same way
(see ``scoring.py``). The scoring rule is not part of the model's config: it is an
evaluation setting (``scoring.ScoreConfig``), so the same weights can be scored many ways.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from . import scoring
from .errors import ConfigError

DEFAULT_IMAGE_SIZE = 128  # px; the one default of every image_size (configs, dataset, grid, CLI)


@dataclass(kw_only=True)
class ModelConfig:
    image_size: int = DEFAULT_IMAGE_SIZE  # input side in px; must be a multiple of the model's stride / patch
    in_channels: int = 3  # 1 (grayscale) or 3 (RGB)

    def validate(self) -> None:
        """Raise ConfigError for values no model can use. Subclasses extend it."""
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels}.")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 px, got {self.image_size}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
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
        was_training = self.training
        self.eval()
        try:
            x_hat = self.reconstruct(x)
        finally:
            self.train(was_training)
        return scoring.anomaly_map(x, x_hat, score_map=score.score_map, score_sigma=score.score_sigma)

    @torch.inference_mode()
    def anomaly_score(self, x: torch.Tensor, score: scoring.ScoreConfig | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B,) image scores under the scoring rule ``score`` (default ``ScoreConfig()``)."""
        score = score or scoring.ScoreConfig()
        return scoring.reduce_map(self.anomaly_map(x, score), score_reduce=score.score_reduce,
                                  score_topk=score.score_topk)
