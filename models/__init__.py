"""Reconstruction-based visual anomaly detection: CAE, VAE, ViT-VAE and VAE-GRF.

Public interface (a contract, see DESIGN.md section 2)::

    models.MODEL_NAMES
    models.build_model(name, image_size=128, in_channels=3, **overrides)
    models.MVTecAD(root, category, split, image_size=128, ...)
    models.list_categories(root)
    models.make_synthetic_dataset(out_dir, seed=0)
    models.grf.GRFPrior(height, width, kernel="exponential", rho=2.0)
"""
from __future__ import annotations

import dataclasses

from . import grf, scoring, variational
from .base import AnomalyModel, ModelConfig
from .cae import CAE
from .errors import CheckpointError, ConfigError, DatasetError, UserError
from .mvtec import MVTecAD, list_categories
from .synthetic import make_synthetic_dataset
from .vae import VAE
from .vae_grf import VAEGRF
from .vit_vae import ViTVAE

# The registry: name -> model class (each class names its config dataclass).
MODELS: dict[str, type[AnomalyModel]] = {"cae": CAE, "vae": VAE, "vit_vae": ViTVAE, "vae_grf": VAEGRF}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_config(name: str, image_size: int = 128, in_channels: int = 3, **overrides) -> ModelConfig:
    """The config dataclass of model ``name`` with defaults replaced by ``overrides``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
    config_class = MODELS[name].config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"{name} has no setting {', '.join(map(repr, unknown))}; valid settings: {', '.join(sorted(fields))}."
        )
    config = config_class(image_size=image_size, in_channels=in_channels, **overrides)
    config.validate()
    return config


def build_model(name: str, image_size: int = 128, in_channels: int = 3, **overrides) -> AnomalyModel:
    """A freshly initialised model ``name`` (one of MODEL_NAMES); unknown names/settings raise ConfigError."""
    config = model_config(name, image_size=image_size, in_channels=in_channels, **overrides)
    return MODELS[name](config)


__all__ = [
    "MODELS", "MODEL_NAMES", "AnomalyModel", "ModelConfig", "build_model", "model_config",
    "MVTecAD", "list_categories", "make_synthetic_dataset", "grf", "scoring",
    "UserError", "DatasetError", "ConfigError", "CheckpointError",
]
