"""What every model shares: the config fields common to all, and the scoring interface.

A model subclasses ``AnomalyModel`` and implements two methods:

- ``loss(x)``: dict with ``"loss"`` (the scalar to minimise) and its named terms;
- ``reconstruct(x)``: the deterministic reconstruction used at test time (a VAE decodes
  the posterior mean, never a sample).

``anomaly_map`` and ``anomaly_score`` come from here, so every model is scored the same way
(see ``scoring.py``); the scoring rule is part of the model's config, hashed into results.
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
    score_map: str = "l2"  # "l2" (mean_c squared residual) or "ssim" (1 - SSIM) / 2
    score_sigma: float = 4.0  # Gaussian smoothing of the map in px; 0 = raw map
    # Image score = mean of the top 1 % of the smoothed l2 map: a defect is local, and the mean
    # over all pixels dilutes it (+0.07-0.13 image AUROC on the demo for all three CNN models,
    # equal on hazelnut_toy; bench/README.md "Accuracy"). top-k is a max robust to one hot pixel.
    score_reduce: str = "topk"  # image score: "mean", "max" or "topk" of the map
    score_topk: float = 0.01  # fraction of pixels averaged by "topk"

    def validate(self) -> None:
        """Raise ConfigError for values no model can use. Subclasses extend it."""
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels}.")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 px, got {self.image_size}.")
        if self.score_map not in scoring.SCORE_MAPS:
            raise ConfigError(f"score_map {self.score_map!r} is unknown; valid: {', '.join(scoring.SCORE_MAPS)}.")
        if self.score_reduce not in scoring.SCORE_REDUCTIONS:
            raise ConfigError(
                f"score_reduce {self.score_reduce!r} is unknown; valid: {', '.join(scoring.SCORE_REDUCTIONS)}."
            )
        if self.score_sigma < 0 or not 0 < self.score_topk <= 1:
            raise ConfigError(
                f"score_sigma must be >= 0 and score_topk in (0, 1], got {self.score_sigma} and {self.score_topk}."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def score_name(self) -> str:
        return scoring.describe(self.score_map, self.score_sigma, self.score_reduce, self.score_topk)


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
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, H, W) float32 map, larger = more anomalous.

        Always computed in eval mode without gradients; the previous mode is restored.
        """
        was_training = self.training
        self.eval()
        try:
            x_hat = self.reconstruct(x)
        finally:
            self.train(was_training)
        c = self.config
        return scoring.anomaly_map(x, x_hat, score_map=c.score_map, score_sigma=c.score_sigma)

    @torch.inference_mode()
    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) image scores under the config's scoring rule."""
        c = self.config
        return scoring.reduce_map(self.anomaly_map(x), score_reduce=c.score_reduce, score_topk=c.score_topk)
