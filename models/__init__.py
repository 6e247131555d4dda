"""The four reconstruction models (CAE, VAE, ViT-VAE, VAE-GRF), what they share, and the
MVTec-layout dataset. Nothing here trains, evaluates, writes results or draws: that is the
``pipeline`` package, which imports this one (never the other way round).

Public interface (a contract, see docs/design.md)::

    models.MODEL_NAMES
    models.build_model(name, image_size=128, in_channels=3, **overrides)
    models.MVTecAD(root, category, split, image_size=128, ...)
    models.list_categories(root)
    models.grf.GRFPrior(height, width, kernel="exponential", rho=2.0)
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from . import grf, scoring, variational
from .base import DEFAULT_IMAGE_SIZE, AnomalyModel, ImageSize, ModelConfig, canonical_size, image_hw, size_label
from .cae import CAE
from .errors import CheckpointError, ConfigError, DatasetError, UserError
from .mvtec import MVTecAD, list_categories
from .vae import VAE
from .vae_grf import VAEGRF
from .vit_vae import ViTVAE

# The registry: name -> model class (each class names its config dataclass).
MODELS: dict[str, type[AnomalyModel]] = {"cae": CAE, "vae": VAE, "vit_vae": ViTVAE, "vae_grf": VAEGRF}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def model_label(name: str) -> str:
    """Display name of model ``name`` (its class's ``label``); an unknown name (a row of an
    old CSV, a model no longer registered) is shown as it is."""
    return MODELS[name].label if name in MODELS else name


def model_config(name: str, image_size: ImageSize = DEFAULT_IMAGE_SIZE, in_channels: int = 3,
                 **overrides) -> ModelConfig:
    """The config dataclass of model ``name`` with defaults replaced by ``overrides``;
    ``image_size`` is S (S x S px) or (height, width)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}.")
    config_class = MODELS[name].config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    scoring_keys = [k for k in unknown if k in {f.name for f in dataclasses.fields(scoring.ScoreConfig)}]
    if scoring_keys:  # a model setting before the scoring rule moved to the evaluation
        raise ConfigError(
            f"{', '.join(scoring_keys)} is an evaluation setting, not a {name} setting (the same weights are scored "
            "under any rule); pass --score MAP/SIGMA/REDUCE on the command line or SCORE in the notebook."
        )
    if unknown:
        raise ConfigError(
            f"{name} has no setting {', '.join(map(repr, unknown))}; valid settings: {', '.join(sorted(fields))}."
        )
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    image_size = canonical_size(image_size)  # S or (H, W); ConfigError for anything else
    for key, value in {"in_channels": in_channels, **overrides}.items():
        _check_type(name, key, value, defaults[key])
    config = config_class(image_size=image_size, in_channels=in_channels, **overrides)
    config.validate()
    return config


def _check_type(name: str, key: str, value, default) -> None:
    """A value of the wrong kind (1.5 for a layer count, text for a tuple) fails here, in one
    sentence, rather than deep inside the model; the default's type says what is expected."""

    def fits(v, d) -> bool:  # numbers.* also admit numpy scalars (e.g. a value read from the CSV)
        if isinstance(d, bool):
            return isinstance(v, (bool, np.bool_))
        if isinstance(d, numbers.Integral):
            return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
        if isinstance(d, numbers.Real):
            return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
        if isinstance(d, str):
            return isinstance(v, str)
        if isinstance(d, tuple):  # a checkpoint's JSON-like config stores tuples as lists
            return isinstance(v, (tuple, list)) and (not d or all(fits(x, d[0]) for x in v))
        return True  # None or a default_factory: the config's validate() decides

    def kind(d) -> str:
        if isinstance(d, tuple):
            return "a list" + (f" of {kind(d[0]).removeprefix('a ')}s" if d else "")
        return {bool: "true or false", int: "a whole number", float: "a number",
                str: "a text"}.get(type(d), type(d).__name__)

    if not fits(value, default):
        raise ConfigError(f"{name}: {key} must be {kind(default)} (default {default!r}), got {value!r}.")


def size_multiple(names, model_overrides: dict | None = None) -> int:
    """The side step every model of ``names`` takes: the least common multiple of their
    ``size_multiple()`` (encoder strides, patch sizes) under ``model_overrides`` (name ->
    settings, already checked by ``model_config``), so one H x W fits them all."""
    step = 1
    for name in names:
        config = MODELS[name].config_class(**(model_overrides or {}).get(name, {}))  # not validated: only its step
        step = math.lcm(step, config.size_multiple())
    return step


def build_model(name: str, image_size: ImageSize = DEFAULT_IMAGE_SIZE, in_channels: int = 3,
                **overrides) -> AnomalyModel:
    """A freshly initialised model ``name`` (one of MODEL_NAMES); unknown names/settings raise ConfigError."""
    config = model_config(name, image_size=image_size, in_channels=in_channels, **overrides)
    return MODELS[name](config)


__all__ = [
    "MODELS", "MODEL_NAMES", "DEFAULT_IMAGE_SIZE", "AnomalyModel", "ModelConfig", "build_model", "model_config",
    "model_label", "ImageSize", "canonical_size", "image_hw", "size_label", "size_multiple",
    "MVTecAD", "list_categories", "grf", "scoring", "variational",
    "UserError", "DatasetError", "ConfigError", "CheckpointError",
]
