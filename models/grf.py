"""Stationary Gaussian-random-field (GRF) prior on an h x w torus, diagonalised by the 2-D FFT.

Each latent channel z in R^{h x w} has the prior N(0, Sigma) with
Sigma_ij = k(d(s_i, s_j)), d the torus distance (each axis wraps: min(|dy|, h - |dy|)) and

- ``"exponential"``: k(d) = s^2 exp(-d / rho)                                (Matern-1/2)
- ``"matern32"``:    k(d) = s^2 (1 + sqrt(3) d / rho) exp(-sqrt(3) d / rho)
- ``"gaussian"``:    k(d) = s^2 exp(-d^2 / (2 rho^2))

rho is in latent pixels; rho = 0 is white noise, N(0, s^2 I). Because k is stationary on the
torus, Sigma is block-circulant and the unnormalised 2-D DFT F (F F^H = n I, n = h w)
diagonalises it: Sigma = (1/n) F^H diag(lambda) F with lambda = Re FFT2(b), b the kernel
row of site (0, 0) laid out as an h x w image (docs/design.md, "The GRF prior").

Why the floor. A kernel that is positive definite on R^2 need not stay so once the distance
wraps around a small torus, and the Gaussian kernel's spectrum decays like exp(-|k|^2 rho^2 / 2),
so its small eigenvalues fall below round-off. We therefore use lambda <- max(lambda,
eps * max(lambda)): the prior actually used is the nearest (in spectrum) positive-definite
circulant covariance with condition number <= 1/eps. ``n_floored`` counts the eigenvalues
that were raised and ``min_raw_eigenvalue`` keeps the smallest one before the floor; a
truly indefinite kernel (a negative eigenvalue beyond round-off) also warns.
``covariance()`` returns the floored matrix, the one the KL and the samples use.

KL of a diagonal posterior q = N(mu, diag sigma^2) against this prior, per channel:

    KL = 1/2 [ tr(Sigma^-1 D) + mu^T Sigma^-1 mu - n + log det Sigma - log det D ]
       = 1/2 [ a sum_i sigma_i^2 + (1/n) sum_k |F(mu)_k|^2 / lambda_k - n
               + sum_k log lambda_k - sum_i log sigma_i^2 ],     a = (1/n) sum_k 1/lambda_k,

since diag(Sigma^-1) = a (stationarity), mu^T Sigma^-1 mu = (1/n) |F mu|^H diag(1/lambda) |F mu|
(Parseval) and det Sigma = prod lambda. Cost O(n log n) per channel instead of O(n^3).
Sampling: z = IFFT2(sqrt(lambda) FFT2(w)), w white noise, is real (lambda is real and even)
with Cov z = (1/n) F^H diag(lambda) F = Sigma.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .errors import ConfigError

KERNELS = ("exponential", "matern32", "gaussian")

# Scaled distances d / rho are capped here: exp(-1e3) is 0 in float64 and the cap keeps
# rho -> 0 free of inf * 0 = nan in the Matern kernel.
_MAX_SCALED_DISTANCE = 1e3


def torus_distance(height: int, width: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """(h, w) Euclidean distance from site (0, 0) to every site, each axis wrapping around."""
    dy = torch.arange(height, dtype=dtype, device=device)
    dx = torch.arange(width, dtype=dtype, device=device)
    dy = torch.minimum(dy, height - dy)  # min(|dy|, h - |dy|)
    dx = torch.minimum(dx, width - dx)
    return torch.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)  # (h, w)


def kernel_values(d: torch.Tensor, kernel: str, rho: torch.Tensor | float, variance: float) -> torch.Tensor:
    """k(d) for a tensor of distances; rho may be a (differentiable) tensor, rho = 0 is white noise."""
    rho = torch.as_tensor(rho, dtype=d.dtype, device=d.device)
    # d = 0 must give k = s^2 even at rho = 0 (0 / tiny = 0); d > 0 with rho -> 0 gives 0.
    tiny = torch.finfo(d.dtype).tiny
    if kernel == "exponential":
        r = (d / rho.clamp_min(tiny)).clamp_max(_MAX_SCALED_DISTANCE)
        k = torch.exp(-r)
    elif kernel == "matern32":
        r = (math.sqrt(3.0) * d / rho.clamp_min(tiny)).clamp_max(_MAX_SCALED_DISTANCE)
        k = (1.0 + r) * torch.exp(-r)
    elif kernel == "gaussian":
        r = (d / rho.clamp_min(tiny)).clamp_max(_MAX_SCALED_DISTANCE)
        k = torch.exp(-0.5 * r * r)
    else:
        raise ConfigError(f"GRF kernel {kernel!r} is unknown; valid kernels: {', '.join(KERNELS)}.")
    return variance * k


def _rfft_weights(width: int, dtype, device) -> torch.Tensor:
    """(w//2 + 1,) multiplicities of the rfft2 columns, so a sum over the half spectrum of an even
    function equals the sum over the full spectrum (columns 1 .. ceil(w/2)-1 stand for two)."""
    weights = torch.ones(width // 2 + 1, dtype=dtype, device=device)
    weights[1 : (width + 1) // 2] = 2.0
    return weights


RHO_BOUNDS = (0.1, 16.0)  # (min, max) of a learned rho in latent px; 16 = the latent side at 128 px


def check_prior_settings(*, kernel: str, rho: float, variance: float, eps: float, learn_rho: bool,
                         rho_bounds: tuple[float, float], where: str = "GRF prior") -> None:
    """Raise ConfigError for settings no GRF prior can use. The one place they are checked:
    ``GRFPrior`` calls it, and so does the VAE-GRF's config (``where`` names the caller)."""
    if kernel not in KERNELS:
        raise ConfigError(f"{where}: kernel {kernel!r} is unknown; valid kernels: {', '.join(KERNELS)}.")
    if not (rho >= 0 and math.isfinite(rho)):
        raise ConfigError(
            f"{where}: rho must be a finite number >= 0 latent pixels (0 = white-noise prior), got {rho}."
        )
    if not variance > 0:
        raise ConfigError(f"{where}: the prior variance must be > 0, got {variance}.")
    if not 0 < eps < 1:
        raise ConfigError(f"{where}: the relative spectrum floor eps must be in (0, 1), got {eps}.")
    lo, hi = rho_bounds
    if learn_rho and not (0 < lo <= rho <= hi):
        raise ConfigError(f"{where}: a learned rho must start inside rho_bounds ({lo}, {hi}) with bounds > 0, "
                          f"got rho={rho}.")


class GRFPrior(nn.Module):
    """N(0, Sigma) on the h x w torus per channel, Sigma stationary (see the module docstring).

    Args:
        height, width: the latent map size (sites of the torus).
        kernel: "exponential" (default), "matern32" or "gaussian".
        rho: correlation length in latent pixels (>= 0; 0 = white noise N(0, s^2 I)).
        variance: s^2, the marginal variance k(0).
        eps: spectrum floor relative to the largest eigenvalue (see "Why the floor").
        learn_rho: make rho a parameter, stored as log rho and clamped to ``rho_bounds``;
            the spectrum is then recomputed (differentiably) on every call.
        rho_bounds: (min, max) of a learned rho.
        kl_float64: evaluate the KL in float64 even for float32 inputs (never on MPS, which has
            none); float64 inputs always are. Off by default: measured at 256 channels x 32 x 32
            (bench/bench_grf.py), float32 is within 1e-6 relative of float64 even for posteriors
            close to the prior (where the terms cancel most) and 2.5x faster on CPU.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        kernel: str = "exponential",
        rho: float = 2.0,
        variance: float = 1.0,
        eps: float = 1e-6,
        learn_rho: bool = False,
        rho_bounds: tuple[float, float] = RHO_BOUNDS,
        kl_float64: bool = False,
    ):
        super().__init__()
        if height < 1 or width < 1:
            raise ConfigError(f"GRF prior needs a latent map of at least 1 x 1 sites, got {height} x {width}.")
        check_prior_settings(kernel=kernel, rho=rho, variance=variance, eps=eps, learn_rho=learn_rho,
                             rho_bounds=rho_bounds)
        lo, hi = rho_bounds
        self.height, self.width, self.kernel = height, width, kernel
        self.variance, self.eps, self.rho_bounds = float(variance), float(eps), (float(lo), float(hi))
        self.kl_float64 = kl_float64
        self.learn_rho = learn_rho
        if learn_rho:
            self.log_rho = nn.Parameter(torch.tensor(math.log(rho), dtype=torch.float32))
        else:
            self.rho_fixed = float(rho)
        # Distances and (for a fixed rho) the floored spectrum, computed once in float64 and kept
        # as float32 buffers: they follow .to(device) (MPS has no float64) and are derived from
        # the config, so they stay out of the state dict (persistent=False).
        d = torus_distance(height, width)  # (h, w)
        self.register_buffer("distance", d.float(), persistent=False)
        self.register_buffer("rfft_weights", _rfft_weights(width, torch.float32, None), persistent=False)
        raw = self._raw_spectrum(d, torch.tensor(rho, dtype=torch.float64))  # (h, w)
        self.min_raw_eigenvalue = float(raw.min())
        floor = self.eps * float(raw.max())
        self.n_floored = int((raw < floor).sum())
        if self.min_raw_eigenvalue < -1e-10 * float(raw.max()):
            warnings.warn(
                f"the {kernel} kernel with rho={rho} is not positive definite on the {height}x{width} torus "
                f"(smallest eigenvalue {self.min_raw_eigenvalue:.3g}); {self.n_floored} eigenvalues were floored "
                f"at eps * max = {floor:.3g}.",
                stacklevel=2,
            )
        self.register_buffer("spectrum_fixed", raw.clamp_min(floor).float(), persistent=False)

    # --- spectrum -------------------------------------------------------------------------
    @property
    def rho(self) -> torch.Tensor:
        """Current correlation length (a clamped tensor when learned)."""
        if self.learn_rho:
            return self.log_rho.exp().clamp(*self.rho_bounds)
        return torch.tensor(self.rho_fixed)

    def _raw_spectrum(self, d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        b = kernel_values(d, self.kernel, rho, self.variance)  # (h, w): the kernel row of site (0, 0)
        return torch.fft.fft2(b).real  # (h, w): eigenvalues of Sigma, real since b is even

    def spectrum(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(h, w) floored eigenvalues lambda of Sigma in FFT order (differentiable in a learned rho)."""
        if not self.learn_rho:
            return self.spectrum_fixed.to(dtype)
        raw = self._raw_spectrum(self.distance.to(dtype), self.rho.to(dtype))
        # The floor is relative to the current max; detach it so it is a constant per step.
        return raw.clamp_min(self.eps * raw.detach().max())

    # --- KL, covariance, samples ------------------------------------------------------------
    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, diag exp(logvar)) || this prior) per sample, summed over channels and sites.

        mu, logvar: (B, C, h, w) -> (B,) in mu's float dtype (float32 for bf16/fp16 inputs: autocast
        is switched off here, an FFT sum over C n terms in bf16 would be meaningless).
        Formula in the module docstring; rfft2 halves the work (lambda is even, so the full sum
        equals the half-spectrum sum with columns weighted by their multiplicity).
        """
        assert mu.shape == logvar.shape, f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} differ"
        assert mu.dim() == 4 and mu.shape[-2:] == (self.height, self.width), (
            f"expected (B, C, {self.height}, {self.width}) latents, got {tuple(mu.shape)}"
        )
        out_dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
        wide = self.kl_float64 or mu.dtype == torch.float64
        dtype = torch.float64 if wide and mu.device.type != "mps" else torch.float32  # never bf16/fp16
        n = self.height * self.width
        with torch.autocast(device_type=mu.device.type, enabled=False):
            mu, logvar = mu.to(dtype), logvar.to(dtype)
            lam = self.spectrum(dtype)  # (h, w)
            w_half = self.rfft_weights.to(dtype)  # (w//2+1,)
            a = (1.0 / lam).sum() / n  # diag of Sigma^-1
            trace = a * logvar.exp().sum(dim=(1, 2, 3))  # (B,)
            f_mu = torch.fft.rfft2(mu)  # (B, C, h, w//2+1)
            power = torch.view_as_real(f_mu).square().sum(-1)  # |F(mu)_k|^2 without abs()'s sqrt
            quad = (power * (w_half / lam[:, : self.width // 2 + 1])).sum(dim=(1, 2, 3)) / n  # (B,)
            channels = mu.shape[1]
            logdet_prior = channels * torch.log(lam).sum()
            logdet_post = logvar.sum(dim=(1, 2, 3))  # (B,)
            kl = 0.5 * (trace + quad - channels * n + logdet_prior - logdet_post)
        return kl.to(out_dtype)

    def covariance(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense (h w, h w) covariance of one channel, row-major sites, as used (floored). Tests only."""
        lam = self.spectrum(dtype)  # (h, w)
        b = torch.fft.ifft2(lam).real  # (h, w): floored kernel row; equals k(d) when nothing is floored
        ys = torch.arange(self.height, device=lam.device).repeat_interleave(self.width)  # (n,)
        xs = torch.arange(self.width, device=lam.device).repeat(self.height)  # (n,)
        dy = (ys[:, None] - ys[None, :]) % self.height  # (n, n)
        dx = (xs[:, None] - xs[None, :]) % self.width
        return b[dy, dx]  # (n, n), symmetric circulant

    @torch.no_grad()
    def sample(self, n: int, channels: int = 1, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, channels, h, w) float32 draws of the prior: IFFT2(sqrt(lambda) FFT2(white noise)).

        Seedable: pass a ``torch.Generator`` on the prior's device.
        """
        lam = self.spectrum(torch.float32)
        noise = torch.randn(n, channels, self.height, self.width, generator=generator, device=lam.device)
        root = lam[:, : self.width // 2 + 1].sqrt()  # (h, w//2+1)
        return torch.fft.irfft2(root * torch.fft.rfft2(noise), s=(self.height, self.width))  # (n, channels, h, w)

    def extra_repr(self) -> str:
        rho = f"learned in {self.rho_bounds}" if self.learn_rho else f"{self.rho_fixed:g}"
        return (
            f"{self.height}x{self.width}, kernel={self.kernel}, rho={rho}, variance={self.variance:g}, "
            f"eps={self.eps:g}, n_floored={self.n_floored}"
        )
