"""PLACEHOLDER being written (issue 3); replaced by the real model."""
from dataclasses import dataclass

from .base import AnomalyModel, ModelConfig


@dataclass(kw_only=True)
class CAEConfig(ModelConfig):
    pass


class CAE(AnomalyModel):
    config_class = CAEConfig
