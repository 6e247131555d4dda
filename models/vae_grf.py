"""PLACEHOLDER being written (issue 3); replaced by the real model."""
from dataclasses import dataclass

from .base import AnomalyModel, ModelConfig


@dataclass(kw_only=True)
class VAEGRFConfig(ModelConfig):
    pass


class VAEGRF(AnomalyModel):
    config_class = VAEGRFConfig
