"""The speed paths change layout, not results: NHWC training on CPU, per-job peak memory."""
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import models
import pipeline.evaluate
import pipeline.grid
import pipeline.job
import pipeline.results
from pipeline.train import TrainConfig, fit, seed_everything


def test_channels_last_fit_matches_nchw_on_cpu():
    """fit() trains conv models in NHWC on CPU too: the same model up to float rounding."""
    g = torch.Generator().manual_seed(0)
    ds = SimpleNamespace(images=torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g), category="w")
    runs = {}
    for cl in (True, False):
        seed_everything(0)
        m = models.build_model("cae", image_size=32, widths=(8, 16), latent_dim=16)
        h = fit(m, ds, None, TrainConfig(epochs=2, batch_size=4, device="cpu", progress=False, channels_last=cl))
        weight = m.encoder.stages[0][0].weight
        runs[cl] = (h["train_loss"],
                    weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous())
    assert runs[True][1] and not runs[False][1]  # the layouts really differ
    assert np.allclose(runs[True][0], runs[False][0], rtol=1e-4)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_per_job():
    """A big allocation before the job does not count in the job's peak_memory_mb."""
    big = np.ones(2**27 // 8)  # 128 MB, touched
    big += 1
    del big
    pipeline.job.reset_peak_memory(torch.device("cpu"))
    peak = pipeline.job.peak_memory_mb(torch.device("cpu"))
    current = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert math.isfinite(peak) and peak < current + 64
