"""Detection quality: train the grid once, then score every trained model under several scoring rules.

    python bench/accuracy.py [--data-root ../shared/data/dev] [--categories grid ...]
                             [--models cae vae vae_grf] [--epochs 30] [--image-size 128]
                             [--batch-size 32] [--lr 1e-3] [--seeds 0 1]
                             [--set cae.latent_dim=64 ...] [--train lr_schedule=constant ...]
                             [--scores default l2/4/mean l2/4/max ssim/4/top0.01 ...]
                             [--label NAME] [--results-csv /tmp/accuracy_runs.csv]
                             [--out-csv /tmp/accuracy_scores.csv] [--num-threads 1] [--force]

1. ``pipeline.grid.run_grid`` trains and evaluates every (category, model) like ``python -m
   pipeline run`` does, with rows cached in a SCRATCH CSV under /tmp (never the repository's
   evaluation_results_all_models.csv) and checkpoints under /tmp/accuracy_ckpt. A rerun with
   the same settings skips training.
2. A scoring rule changes only how a reconstruction is turned into a map and a score, not
   the training. So each trained model is loaded from its checkpoint, reconstructs the test
   and val images ONCE, and every rule in ``--scores`` is evaluated on those same
   reconstructions: the comparison is cheap and fair (same weights, same residuals).
   A rule is MAP/SIGMA/REDUCE: map l2 or ssim, Gaussian sigma in px (0 = raw), reduce mean,
   max or topF (mean of the top fraction F of pixels), e.g. l2/0/mean (the classic
   ||x - x_hat||^2), l2/4/max, ssim/4/top0.01. "default" = the model config's own rule.

Printed: image AUROC, pixel AUROC, AU-PRO, F1 (threshold = max val score, no test labels)
per category, model and rule, with the training budget (epochs, steps, image size) and
train / wall seconds; then the mean over categories per model and rule. Every printed row is
appended to ``--out-csv`` with ``--label`` so runs can be compared afterwards.
Small test sets: one image moves AUROC by several points; compare settings, not digits.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from models import scoring
from pipeline import metrics
from pipeline.__main__ import parse_overrides, parse_value
from pipeline.checkpoints import checkpoint_path, load_checkpoint
from pipeline.grid import run_grid
from pipeline.job import load_category
from pipeline.results import DEFAULT_RESULTS_CSV
from pipeline.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "dev"
DEFAULT_RULES = ("default", "l2/0/mean", "l2/4/mean", "l2/4/max", "l2/4/top0.01", "ssim/4/mean", "ssim/4/max",
                 "ssim/4/top0.01")


def parse_rule(text: str, cfg) -> dict:
    """'l2/4/top0.01' -> dict(score_map, score_sigma, score_reduce, score_topk); 'default' = cfg's rule."""
    if text == "default":
        return dict(score_map=cfg.score_map, score_sigma=cfg.score_sigma, score_reduce=cfg.score_reduce,
                    score_topk=cfg.score_topk)
    try:
        m, sigma, reduce = text.split("/")
        topk = 0.01
        if reduce.startswith("top"):
            reduce, topk = "topk", float(reduce[3:])
        rule = dict(score_map=m, score_sigma=float(sigma), score_reduce=reduce, score_topk=topk)
    except ValueError:
        msg = f"--scores: cannot read {text!r}; write MAP/SIGMA/REDUCE, e.g. l2/4/max or ssim/4/top0.01."
        raise SystemExit(msg) from None
    if m not in scoring.SCORE_MAPS or reduce not in scoring.SCORE_REDUCTIONS:
        raise SystemExit(f"--scores: {text!r} names an unknown map or reduction; maps: {scoring.SCORE_MAPS}, "
                         f"reductions: mean, max, topF.")
    return rule


@torch.inference_mode()
def reconstruct_split(model, ds, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, reconstructions) of a whole split as float32 (N, C, S, S) CPU tensors."""
    xs, xhs = [], []
    for idx in torch.arange(len(ds.images)).split(batch_size):
        x = ds.images[idx].float().div_(255.0)  # (B, C, S, S) in [0, 1]
        xs.append(x)
        xhs.append(model.reconstruct(x).float())
    return torch.cat(xs), torch.cat(xhs)


def score_rule(x, x_hat, rule: dict, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.cat([scoring.anomaly_map(a, b, score_map=rule["score_map"], score_sigma=rule["score_sigma"])
                      for a, b in zip(x.split(batch_size), x_hat.split(batch_size))])  # (N, H, W)
    return maps, scoring.reduce_map(maps, score_reduce=rule["score_reduce"], score_topk=rule["score_topk"])


def rescore(row, data, ckpt_dir: Path, rules: list[str]) -> list[dict]:
    """One trained model (found by its row's config_hash) scored under every rule."""
    path = checkpoint_path(ckpt_dir, dataset=row["dataset"], category=row["category"], model=row["model"],
                           config_hash=row["config_hash"])
    model = load_checkpoint(path)
    x_test, xh_test = reconstruct_split(model, data.test)
    x_val, xh_val = reconstruct_split(model, data.val)
    labels = data.test.labels.numpy()
    masks = data.test.masks.numpy() if data.test.has_masks else None
    out = []
    for text in rules:
        rule = parse_rule(text, model.config)
        test_maps, test_scores = score_rule(x_test, xh_test, rule)
        _, val_scores = score_rule(x_val, xh_val, rule)
        thr = metrics.val_threshold(val_scores.numpy(), row.get("threshold_rule") or "val_max")
        res = {
            "rule": scoring.describe(**rule) + (" *" if text == "default" else ""),
            "image_auroc": metrics.image_auroc(labels, test_scores.numpy()),
            "pixel_auroc": metrics.pixel_auroc(masks, test_maps.numpy()) if masks is not None else float("nan"),
            "aupro": metrics.aupro(masks, test_maps.numpy()) if masks is not None else float("nan"),
            "f1": metrics.f1_at_threshold(labels, test_scores.numpy(), thr)["f1"],
            "f1_max": metrics.f1_max(labels, test_scores.numpy()),
        }
        out.append(res)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(DEFAULT_ROOT), help="MVTec-layout root (default ../shared/data/dev)")
    p.add_argument("--categories", nargs="+", default=None)
    p.add_argument("--models", nargs="+", default=["cae", "vae", "vae_grf"])
    p.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE", help="model config override")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    p.add_argument("--scores", nargs="+", default=list(DEFAULT_RULES), help="scoring rules MAP/SIGMA/REDUCE")
    p.add_argument("--label", default="", help="name of this setting in --out-csv")
    p.add_argument("--results-csv", default="/tmp/accuracy_runs.csv", help="scratch cache of trained rows")
    p.add_argument("--checkpoint-dir", default="/tmp/accuracy_ckpt")
    p.add_argument("--out-csv", default="/tmp/accuracy_scores.csv", help="every printed row is appended here")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="retrain rows already in --results-csv")
    a = p.parse_args(argv)
    # The repository's table, wherever this is run from (DEFAULT_RESULTS_CSV is relative to the cwd).
    if Path(a.results_csv).resolve() in {Path(DEFAULT_RESULTS_CSV).resolve(), (REPO / DEFAULT_RESULTS_CSV).resolve()}:
        raise SystemExit("--results-csv must be a scratch file, not the repository's results table.")
    torch.set_num_threads(a.num_threads)

    train_kw = {k: v for k, v in dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr).items() if v is not None}
    for item in a.train:
        key, _, value = item.partition("=")
        v = parse_value(value)
        train_kw[key] = tuple(v) if isinstance(v, list) else v
    overrides = parse_overrides(a.set)
    root = Path(a.data_root)
    ckpt_dir = Path(a.checkpoint_dir)
    rows = []
    wall0 = time.perf_counter()
    for seed in a.seeds:
        train = TrainConfig(seed=seed, device=a.device, num_threads=a.num_threads, progress=False, **train_kw)
        t0 = time.perf_counter()
        df = run_grid(root, a.categories, a.models, image_size=a.image_size, train=train,
                      model_overrides=overrides, results_csv=a.results_csv, force=a.force,
                      checkpoint_dir=ckpt_dir, log=lambda m: print(m, flush=True))
        grid_s = time.perf_counter() - t0
        for f in df.attrs.get("failures", []):
            print(f"FAILED {f['model']} on {f['category']}: {f['error']}")
        for category, group in df.groupby("category", sort=False):
            data = load_category(root, category, image_size=a.image_size, seed=seed)
            for _, row in group.iterrows():
                budget = dict(label=a.label, dataset=row["dataset"], category=category, model=row["model"], seed=seed,
                              image_size=int(row["image_size"]), epochs=int(row["epochs"]),
                              train_seconds=float(row["train_seconds"]), config_hash=row["config_hash"])
                for res in rescore(row, data, ckpt_dir, a.scores):
                    rows.append({**budget, **res})
        print(f"seed {seed}: grid {grid_s:.0f} s (cached rows cost nothing)")
    wall = time.perf_counter() - wall0
    table = pd.DataFrame(rows)
    table["wall_s"] = wall
    out_csv = Path(a.out_csv)
    table.to_csv(out_csv, mode="a", header=not out_csv.exists(), index=False)

    cols = ["category", "model", "seed", "rule", "image_auroc", "pixel_auroc", "aupro", "f1", "train_seconds"]
    fmt = lambda x: f"{x:.3f}"
    with pd.option_context("display.width", 200, "display.max_rows", 1000):
        print(f"\n== {a.label or 'run'}: {root}, {a.image_size} px, train {train_kw or 'defaults'}, "
              f"overrides {overrides or 'none'}")
        print(table[cols].to_string(index=False, float_format=fmt))
        mean = table.groupby(["model", "rule"], sort=False)[cols[4:]].mean().reset_index()  # metrics, train_seconds
        print("\nmean over categories (and seeds):")
        print(mean.to_string(index=False, float_format=fmt))
    print(f"\nwall {wall:.0f} s; rows appended to {out_csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
