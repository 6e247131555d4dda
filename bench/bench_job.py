"""Where one job's time goes, and what the vectorised metrics save.

    python bench/bench_job.py [--data-root ../shared/data/dev] [--category grid] [--models cae vae ...]
                              [--image-size 128] [--epochs 5] [--batch-size 32] [--threads N]
                              [--aupro-maps 100] [--aupro-size 256] [--skip-job] [--skip-aupro]

Part 1, per model, one full job (as pipeline.job.compute_job does it), split into:
  data      decode + resize the category's train/val/test once (cold: memory cache cleared
            for the first model; the later models reuse it, as in a grid)
  train     fit(); "batching" is the part of it spent gathering + converting batches
  scoring   anomaly maps + scores of test and val (batched, inference_mode)
  metrics   image/pixel AUROC, AU-PRO, threshold, F1, F1-max
and training / inference throughput in images/s.

Part 2: AU-PRO of N maps at S px (random maps, blob-shaped defects in half the images):
metrics.aupro (exact, one sort) against a straightforward implementation that loops over
200 thresholds (binary map, FPR and per-component overlap per threshold), plus pixel AUROC
against sklearn.metrics.roc_auc_score.

Without --data-root it uses ../shared/data/dev when present, else a small demo dataset in a
temporary folder. Wall-clock numbers on a shared machine: noisy, compare within one run.
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import models
from models import mvtec
from pipeline import metrics
from pipeline.demo_data import make_synthetic_dataset
from pipeline.evaluate import compute_metrics, score_split
from pipeline.job import JobSpec, load_category
from pipeline.thresholds import DEFAULT_THRESHOLD_RULE
from pipeline.train import TrainConfig, fit, resolve_device, seed_everything


def bench_job(root, category, names, *, image_size, epochs, batch_size, device) -> None:
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, device=device, progress=False)
    dev = resolve_device(device)
    print(f"\n== one job per model: {root} / {category}, {image_size} px, {epochs} epochs, batch {batch_size}, "
          f"{dev}, {torch.get_num_threads()} threads")
    header = (f"{'model':8s} {'params':>8s} {'data s':>7s} {'train s':>8s} {'batching':>8s} {'scoring s':>9s} "
              f"{'metrics s':>9s} {'train img/s':>11s} {'infer img/s':>11s} {'score+metrics/train':>19s}")
    print(header)
    mvtec.clear_memory_cache()
    dataset = mvtec.dataset_name(root)
    for name in names:
        spec = JobSpec(data_root=root, category=category, model=name, dataset=dataset, image_size=image_size,
                       train=cfg)
        t0 = time.perf_counter()
        data = load_category(spec)
        data_s = time.perf_counter() - t0
        seed_everything(cfg.seed)
        model = models.build_model(name, image_size=image_size)
        hist = fit(model, data.train, data.val, cfg, desc=name)
        t0 = time.perf_counter()
        maps, scores = score_split(model, data.test, batch_size=hist["batch_size"], device=dev)
        _, val_scores = score_split(model, data.val, batch_size=hist["batch_size"], device=dev)
        score_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        masks = data.test.masks.numpy() if data.test.has_masks else None
        compute_metrics(data.test.labels.numpy(), masks, maps.numpy(), scores, val_scores, DEFAULT_THRESHOLD_RULE)
        metric_s = time.perf_counter() - t0
        n_train, n_scored = len(data.train.images), len(data.test.images) + len(data.val.images)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:8s} {params / 1e6:7.2f}M {data_s:7.2f} {hist['seconds']:8.2f} "
              f"{100 * hist['data_seconds'] / hist['seconds']:7.1f}% {score_s:9.2f} {metric_s:9.3f} "
              f"{epochs * n_train / hist['seconds']:11.1f} {n_scored / score_s:11.1f} "
              f"{100 * (score_s + metric_s) / hist['seconds']:18.1f}%")
        del model, data, maps, scores
        gc.collect()


def straightforward_aupro(masks, maps, fpr_limit=0.3, n_thresholds=200):
    """The usual loop: for each of n_thresholds evenly spaced thresholds, binarise the maps,
    count false positives, and average the overlap of every component (np.bincount)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), int)
    structure[1] = 1
    labelled, k = ndimage.label(masks > 0, structure=structure)
    sizes = np.bincount(labelled.ravel(), minlength=k + 1)[1:]
    normal = labelled == 0
    n_normal = normal.sum()
    fprs, pros = [], []
    for t in np.linspace(maps.max(), maps.min(), n_thresholds):
        binary = maps >= t
        fprs.append((binary & normal).sum() / n_normal)
        hits = np.bincount(labelled[binary], minlength=k + 1)[1:]
        pros.append(np.mean(hits / sizes))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x = np.r_[0.0, fprs[keep], fpr_limit]
    y = np.r_[0.0, pros[keep], np.interp(fpr_limit, fprs, pros)]
    return np.trapezoid(y, x) / fpr_limit if hasattr(np, "trapezoid") else np.trapz(y, x) / fpr_limit


def blob_case(n_maps: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A metric benchmark case: (masks uint8, maps float32), each (n_maps, size, size); half the
    images hold 1-3 round defects of radius 3-25 px, and their maps are noise + 0.5 inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n_maps, size, size), np.uint8)
    for i in range(n_maps // 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 26)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    maps = (rng.random((n_maps, size, size), dtype=np.float32) + 0.5 * masks).astype(np.float32)
    return masks, maps


def bench_aupro(n_maps, size, seed=0) -> None:
    from sklearn.metrics import roc_auc_score

    masks, maps = blob_case(n_maps, size, seed)
    print(f"\n== metrics on {n_maps} maps of {size} x {size} px ({masks.mean():.1%} defect pixels)")

    def timed(fn, repeat=3):
        best, out = float("inf"), None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return out, best

    exact, t_exact = timed(lambda: metrics.aupro(masks, maps))
    loop, t_loop = timed(lambda: straightforward_aupro(masks, maps), repeat=1)
    print(f"AU-PRO  metrics.aupro (exact, all thresholds): {t_exact:6.3f} s  value {exact:.5f}")
    print(f"AU-PRO  200-threshold loop (approximate):      {t_loop:6.3f} s  value {loop:.5f}  "
          f"-> {t_loop / t_exact:.1f}x slower")
    ours, t_ours = timed(lambda: metrics.pixel_auroc(masks, maps))
    ref, t_ref = timed(lambda: roc_auc_score(masks.ravel(), maps.ravel()), repeat=1)
    print(f"pixel AUROC  metrics.pixel_auroc: {t_ours:6.3f} s   sklearn roc_auc_score: {t_ref:6.3f} s "
          f"({t_ref / t_ours:.1f}x)   |diff| {abs(ours - ref):.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root")
    p.add_argument("--category")
    p.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--aupro-maps", type=int, default=100)
    p.add_argument("--aupro-size", type=int, default=256)
    p.add_argument("--skip-job", action="store_true")
    p.add_argument("--skip-aupro", action="store_true")
    a = p.parse_args()
    warnings.formatwarning = lambda message, category, *args, **kw: f"warning: {message}\n"
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.skip_aupro:
        bench_aupro(a.aupro_maps, a.aupro_size)
    if not a.skip_job:
        root = a.data_root
        dev = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev"
        if root is None and dev.is_dir():
            root = dev.resolve()
        if root is None:
            root = make_synthetic_dataset(Path(tempfile.mkdtemp()) / "demo", image_size=a.image_size,
                                          n_train=60, n_test_good=12, n_per_defect=5, categories=["hexnut"])
        category = a.category or models.list_categories(root)[0]
        bench_job(root, category, a.models, image_size=a.image_size, epochs=a.epochs, batch_size=a.batch_size,
                  device=a.device)


if __name__ == "__main__":
    main()
