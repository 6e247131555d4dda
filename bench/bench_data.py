"""Data-layer benchmark: demo generation time, decode+resize ms per image, what the caches save.

    python bench/bench_data.py [--demo data/demo] [--dev ../shared/data/dev] [--sizes 128 256]

For each data root (the demo dataset, and ../shared/data/dev when present) and image size,
it builds every category's train and test split three ways:
  first   nothing cached: decode + resize every file (thread pool, and with one thread);
  memory  again in the same process (process-wide memory cache);
  disk    in a "new process" (memory cache cleared) reading cache_dir.
Numbers are wall-clock ms per image file (images + masks), on a shared machine: noisy.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import models
from models import mvtec
from pipeline.demo_data import make_synthetic_dataset


def _load_all(root, categories, size, **kwargs) -> int:
    n = 0
    for cat in categories:
        for split in ("train", "test"):
            ds = models.MVTecAD(root, cat, split, image_size=size, val_fraction=0.0, **kwargs)
            n += len(ds) + int((ds.labels == 1).sum()) * ds.has_masks  # image files + mask files
    return n


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_root(name: str, root: Path, sizes) -> list[str]:
    cats = models.list_categories(root)
    rows = []
    for size in sizes:
        cache = Path(tempfile.mkdtemp(prefix="bench_cache_"))
        try:
            mvtec.clear_memory_cache()
            n, t1 = _timed(lambda: _load_all(root, cats, size, workers=1, memory_cache=False))
            mvtec.clear_memory_cache()
            n, tp = _timed(lambda: _load_all(root, cats, size, cache_dir=cache))
            _, tm = _timed(lambda: _load_all(root, cats, size, cache_dir=cache))
            mvtec.clear_memory_cache()
            _, td = _timed(lambda: _load_all(root, cats, size, cache_dir=cache))
            mb = sum(p.stat().st_size for p in cache.glob("*.pt")) / 2**20
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            mvtec.clear_memory_cache()
        ms = lambda t: f"{1000 * t / n:7.2f}"  # noqa: E731
        rows.append(
            f"{name:>5} {size:>4}px {n:>5} files | first 1 thread {ms(t1)} | first pool {ms(tp)} "
            f"| memory {ms(tm)} | disk {ms(td)} ms/file | disk cache {mb:6.1f} MiB"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="data/demo", help="where the demo dataset is (written if absent)")
    parser.add_argument("--dev", default="../shared/data/dev", help="real-image dev root, skipped if absent")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--regenerate", action="store_true", help="time writing the demo into a fresh folder")
    args = parser.parse_args()

    if args.regenerate:
        fresh = Path(tempfile.mkdtemp(prefix="bench_demo_")) / "demo"
        _, t = _timed(lambda: make_synthetic_dataset(fresh, seed=0))
        n = sum(1 for _ in fresh.rglob("*.png"))
        print(f"demo dataset written in {t:.1f} s ({n} PNG files, {1000 * t / n:.1f} ms/file)", flush=True)
        shutil.rmtree(fresh.parent, ignore_errors=True)
    demo = make_synthetic_dataset(args.demo, seed=0)  # no-op when already there
    bench_root("demo", demo, args.sizes)
    dev = Path(args.dev)
    if dev.is_dir():
        bench_root("dev", dev, args.sizes)
    else:
        print(f"{dev} not found: dev benchmark skipped")


if __name__ == "__main__":
    main()
