"""PLACEHOLDER being written (issue 3); replaced by the real model."""
from dataclasses import dataclass

from .base import AnomalyModel, ModelConfig


@dataclass(kw_only=True)
class ViTVAEConfig(ModelConfig):
    pass


class ViTVAE(AnomalyModel):
    config_class = ViTVAEConfig
