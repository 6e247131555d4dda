"""Wall time of a small grid with the local loop vs the Ray executor, and Ray's per-task overhead.

    python bench/ray_overhead.py                      # the demo-like tiny data at 64 px, 4 models x 2 categories
    python bench/ray_overhead.py --size 32 --epochs 1 --cpus-per-job 1

Writes only under a temporary folder. Ray is started once (its start-up time is reported
apart) and both grids train the same jobs with one torch thread each, so the difference is
the parallelism across jobs minus Ray's cost (object store, task dispatch, result transfer).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import ray

from pipeline.grid import GridConfig, Settings, run_grid
from pipeline.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_tiny_mvtec  # noqa: E402

TINY = {
    "cae": {"widths": (8, 16), "latent_dim": 16},
    "vae": {"widths": (8, 16), "latent_dim": 16},
    "vit_vae": {"patch_size": 8, "dim": 16, "depth": 1, "decoder_depth": 1, "heads": 2, "latent_dim": 4},
    "vae_grf": {"widths": (8, 16), "latent_channels": 4},
}


def noop(x):
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--cpus-per-job", type=float, default=1)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    root = make_tiny_mvtec(tmp / "data", categories=("widget", "fabric"), size=args.size, n_train=args.n_train)
    train = TrainConfig(epochs=args.epochs, batch_size=8, progress=False, num_threads=1)
    config = GridConfig(data_root=root, models=list(TINY), image_size=args.size, train=train, model_overrides=TINY)

    t0 = time.perf_counter()
    run_grid(config, Settings(results_csv=tmp / "local.csv", checkpoint_dir=tmp / "ck_local", log=lambda m: None))
    local = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    remote = ray.remote(noop)
    ray.get([remote.remote(i) for i in range(20)])  # warm the workers
    t0 = time.perf_counter()
    ray.get([remote.remote(i) for i in range(200)])
    per_task = (time.perf_counter() - t0) / 200
    t0 = time.perf_counter()
    run_grid(config, Settings(results_csv=tmp / "ray.csv", checkpoint_dir=tmp / "ck_ray", log=lambda m: None,
                              executor="ray", cpus_per_job=args.cpus_per_job))
    on_ray = time.perf_counter() - t0
    cpus = ray.cluster_resources().get("CPU")
    ray.shutdown()
    print(f"8 jobs ({args.size} px, {args.epochs} epochs, {args.n_train} train images), {cpus:.0f} CPUs:")
    print(f"  local loop        {local:6.1f} s")
    print(f"  ray executor      {on_ray:6.1f} s  (+ {start:.1f} s to start a local Ray, once)")
    print(f"  no-op task        {per_task * 1000:6.2f} ms per task (throughput of 200 queued tasks)")


if __name__ == "__main__":
    main()
