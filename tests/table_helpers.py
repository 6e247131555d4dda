"""Small fake results tables and test splits for the tests of tables, figures and the report (no files, no training)."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import torch

import models

CATEGORIES = {"carpet": "texture", "grid": "texture", "bottle": "object", "screw": "object", "widget": "custom"}


def fake_results(categories=CATEGORIES, model_names=models.MODEL_NAMES, seed=0, nan_category=None) -> pd.DataFrame:
    """A results table shaped like the CSV (docs/design.md, "The results CSV"), with random metrics."""
    rng = np.random.default_rng(seed)
    rows = []
    for cat, category_type in categories.items():
        for name in model_names:
            f1 = rng.uniform(0.3, 0.9)
            no_mask = cat == nan_category
            rows.append(dict(
                dataset="demo", category=cat, category_type=category_type, model=name,
                image_auroc=rng.uniform(0.4, 1.0), pixel_auroc=np.nan if no_mask else rng.uniform(0.5, 1.0),
                aupro=np.nan if no_mask else rng.uniform(0.2, 0.9), f1=f1, precision=0.5, recall=0.5,
                threshold=0.1, threshold_rule="val_max", f1_max=min(1.0, f1 + 0.05), score="l2|sigma4|mean",
                epochs=1, image_size=32, seed=0, train_seconds=1.0, infer_ms_per_image=1.0, params=1000,
                config_hash="h", device="cpu", torch_version=torch.__version__, finished_at="2024-01-01T00:00:00",
            ))
    return pd.DataFrame(rows)


def fake_seeds(n_seeds=3, categories=CATEGORIES, model_names=models.MODEL_NAMES, **kw) -> pd.DataFrame:
    """``fake_results`` for seeds 0 .. n_seeds - 1 of one config (each seed its own random metrics)."""
    return pd.concat([fake_results(categories, model_names, seed=s, **kw).assign(seed=s, config_hash=f"h{s}")
                      for s in range(n_seeds)], ignore_index=True)


def toy_test_split(size=32, channels=3):
    """The attributes of an MVTecAD test split that the gallery reads."""
    g = torch.Generator().manual_seed(0)
    n_good, n_bad = 4, 6
    images = (torch.rand(n_good + n_bad, channels, size, size, generator=g) * 80 + 80).to(torch.uint8)
    masks = torch.zeros(n_good + n_bad, size, size, dtype=torch.uint8)
    kinds = ["good"] * n_good
    for k in range(n_bad):
        y = x = 4 + 3 * k
        masks[n_good + k, y:y + 6, x:x + 6] = 1
        images[n_good + k, :, y:y + 6, x:x + 6] = 255
        kinds.append(("hole", "scratch")[k % 2])
    return types.SimpleNamespace(images=images, masks=masks, labels=torch.tensor([0] * n_good + [1] * n_bad),
                                 defect_types=kinds, image_size=size, in_channels=channels, category="toy")


