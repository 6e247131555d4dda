"""Cost of the GRF prior's KL: O(n log n) FFT formula against the dense Gaussian formula.

    python bench/bench_grf.py [--channels 256] [--batch 32] [--threads 1] [--device cpu]

For each latent side (16, 32, 64) it times GRFPrior.kl forward + backward (float64 inside, and float32,
the default) at batch B with C channels, and the dense formula
1/2 [tr(S^-1 D) + mu^T S^-1 mu - n + log det S - log det D] with S^-1 and log det S
precomputed once (Cholesky, timed separately) where the n x n matrix is affordable. It also
prints the relative difference of the two KLs. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import time

import torch

from models.grf import GRFPrior


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def dense_kl(mu, logvar, s_inv, logdet_s):
    b, c, h, w = mu.shape
    n = h * w
    m = mu.reshape(b, c, n)  # (B, C, n)
    quad = ((m @ s_inv) * m).sum(dim=(1, 2))  # (B,)
    trace = (logvar.exp().reshape(b, c, n) * torch.diagonal(s_inv)).sum(dim=(1, 2))
    return 0.5 * (trace + quad - c * n + c * logdet_s - logvar.sum(dim=(1, 2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--dense-max-side", type=int, default=32, help="largest side for the dense formula")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    b, c = args.batch, args.channels
    print(f"GRF KL, batch {b} x {c} channels, device {dev}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    print(f"{'side':>5} {'n':>5} {'fft64 fwd+bwd':>14} {'fft32 fwd+bwd':>14} {'dense fwd+bwd':>14} "
          f"{'dense setup':>12} {'S MB':>7} {'rel diff':>9}")
    for side in args.sides:
        n = side * side
        prior = GRFPrior(side, side, kernel="exponential", rho=2.0).to(dev)
        gen = torch.Generator(device=dev).manual_seed(0)
        mu = torch.randn(b, c, side, side, device=dev, generator=gen).requires_grad_()
        logvar = (0.3 * torch.randn(b, c, side, side, device=dev, generator=gen)).requires_grad_()

        def fft(p=prior):
            p.kl(mu, logvar).sum().backward()

        prior.kl_float64 = True
        t64 = timed(fft, args.repeats)
        prior.kl_float64 = False  # the default
        t32 = timed(fft, args.repeats)
        row = f"{side:>5} {n:>5} {t64 * 1e3:>11.1f} ms {t32 * 1e3:>11.1f} ms"
        if side <= args.dense_max_side:
            t = time.perf_counter()
            cov = prior.covariance(torch.float32).to(dev)  # (n, n)
            chol = torch.linalg.cholesky(cov.double())
            s_inv = torch.cholesky_inverse(chol).float()
            logdet = 2 * torch.log(torch.diagonal(chol)).sum().float()
            setup = time.perf_counter() - t
            td = timed(lambda: dense_kl(mu, logvar, s_inv, logdet).sum().backward(), args.repeats)
            with torch.no_grad():
                ref = dense_kl(mu.double(), logvar.double(), s_inv.double(), logdet.double())
                rel = ((prior.kl(mu, logvar).double() - ref).abs() / ref.abs()).max().item()
            row += f" {td * 1e3:>11.1f} ms {setup * 1e3:>9.1f} ms {cov.numel() * 4 / 2**20:>7.1f} {rel:>9.1e}"
        else:
            row += f" {'-':>14} {'-':>12} {n * n * 4 / 2**20:>7.0f} {'-':>9}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
