"""Size, speed and memory of every registered model at 128 px (default configs).

    python bench/bench_models.py [--models cae vae ...] [--image-size 128] [--batch 16]
                                 [--seconds 8] [--threads N] [--device cpu|cuda]

Per model: parameters, training images/s (forward + backward + Adam step, train mode),
inference images/s (anomaly_score: eval, no grad, the test-time path) and peak memory.
Each model runs in its own child process, because ru_maxrss is a high-water mark of the
whole process: on CPU "peak MB" is the child's peak resident set minus its resident set
just before the first step (so it excludes torch itself and counts weights, Adam state,
activations and allocator slack); on CUDA it is torch.cuda.max_memory_allocated.
Timings run for about --seconds each after one warm-up step. Not a test: the numbers
depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import models


def rss_mb() -> float:
    """Current resident set of this process in MB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def rate(step, batch: int, seconds: float, sync) -> float:
    """Images/s of step() run repeatedly for about ``seconds`` (at least 3 times)."""
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        sync()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def bench_one(name: str, args) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = models.build_model(name, image_size=args.image_size, in_channels=3).to(device)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        out = model.loss(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    rss0 = rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_step()  # warm-up (allocates Adam state and the autograd buffers)
    sync()
    train_ips = rate(train_step, args.batch, args.seconds, sync)
    infer_ips = rate(lambda: model.anomaly_score(x), args.batch, args.seconds / 2, sync)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb() - rss0
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "train_img_s": round(train_ips, 1),
        "infer_img_s": round(infer_ips, 1),
        "peak_mb": round(peak, 1),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch": args.batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES), choices=models.MODEL_NAMES)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="timing window per model for training")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: bench one model, print JSON
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(bench_one(args.one, args)))
        return
    passthrough = sys.argv[1:]
    print(f"{'model':8s} {'params':>11s} {'train img/s':>12s} {'infer img/s':>12s} {'peak MB':>9s}"
          f"   ({args.device}, {args.image_size} px, batch {args.batch})", flush=True)
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--one", name],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{name:8s} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:8s} {r['params']:>11,d} {r['train_img_s']:>12.1f} {r['infer_img_s']:>12.1f} "
              f"{r['peak_mb']:>9.1f}   threads={r['threads']}", flush=True)


if __name__ == "__main__":
    main()
