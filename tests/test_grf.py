"""The GRF prior (models/grf.py) against dense linear algebra, and VAE-GRF's reduction to a map-latent VAE."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import models
from models.grf import KERNELS, GRFPrior, kernel_values, torus_distance

SHAPES = [(4, 4), (6, 8), (4, 6), (6, 4)]  # non-square tori both ways (the latent map of H != W inputs)
RHOS = [0.3, 1.0, 2.0, 5.0]


def dense_kl(mu: torch.Tensor, logvar: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """1/2 [tr(S^-1 D) + mu^T S^-1 mu - n + log det S - log det D] per sample, summed over channels (float64)."""
    b, c, h, w = mu.shape
    n = h * w
    m = mu.reshape(b, c, n)  # (B, C, n) row-major sites, as covariance()
    var = logvar.exp().reshape(b, c, n)
    s_inv = torch.linalg.inv(cov)
    trace = (torch.diagonal(s_inv) * var).sum(-1)
    quad = torch.einsum("bci,ij,bcj->bc", m, s_inv, m)
    logdet = torch.linalg.slogdet(cov)[1]
    return (0.5 * (trace + quad - n + logdet - logvar.reshape(b, c, n).sum(-1))).sum(1)  # (B,)


def std_normal_kl(mu, logvar, variance=1.0):
    """KL(N(mu, diag e^logvar) || N(0, s^2 I)) per sample."""
    v = logvar.exp()
    return 0.5 * ((mu.pow(2) + v) / variance - 1.0 - logvar + math.log(variance)).flatten(1).sum(1)


def prior(*args, **kwargs) -> GRFPrior:
    with warnings.catch_warnings():  # indefinite kernels warn by design; tested below
        warnings.simplefilter("ignore")
        return GRFPrior(*args, **kwargs)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES + [(5, 7), (7, 4)])  # odd sides too
def test_fft_kl_matches_dense_kl(kernel, shape):
    h, w = shape
    gen = torch.Generator().manual_seed(0)
    for rho in RHOS:
        p = prior(h, w, kernel=kernel, rho=rho, variance=1.3)
        cov = p.covariance()
        mu = torch.randn(3, 2, h, w, generator=gen, dtype=torch.float64)
        logvar = 0.5 * torch.randn(3, 2, h, w, generator=gen, dtype=torch.float64)
        fast, slow = p.kl(mu, logvar), dense_kl(mu, logvar, cov)
        assert fast.shape == (3,) and fast.dtype == torch.float64
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0, msg=f"{kernel} rho={rho} {h}x{w}")
        # float32 inputs are evaluated in float64 internally and agree as well as float32 allows.
        torch.testing.assert_close(p.kl(mu.float(), logvar.float()).double(), slow, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES + [(5, 7)])
def test_floored_covariance_is_symmetric_positive_definite(kernel, shape):
    h, w = shape
    for rho in RHOS + [20.0]:
        p = prior(h, w, kernel=kernel, rho=rho)
        cov = p.covariance()
        assert cov.shape == (h * w, h * w)
        torch.testing.assert_close(cov, cov.T, rtol=0, atol=1e-12)
        eig = torch.linalg.eigvalsh(cov)
        assert eig.min() > 0, f"{kernel} rho={rho}: min eigenvalue {eig.min():.3g}"
        assert eig.max() / eig.min() <= 1.0 / p.eps * (1 + 1e-6)
        if p.n_floored == 0:
            # Nothing floored: the matrix is the kernel itself, k(torus distance) entry by entry.
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            ys, xs = ys.flatten().double(), xs.flatten().double()
            dy = (ys[:, None] - ys[None, :]).abs()
            dx = (xs[:, None] - xs[None, :]).abs()
            d = torch.sqrt(torch.minimum(dy, h - dy) ** 2 + torch.minimum(dx, w - dx) ** 2)
            # The spectrum is kept in float32 (MPS has no float64): agreement to float32 round-off.
            torch.testing.assert_close(cov, kernel_values(d, kernel, rho, 1.0), rtol=1e-6, atol=1e-6)


def test_indefinite_kernel_is_floored_and_reported():
    # The Gaussian kernel with rho = 2 is not positive definite on a 4x4 torus (distances wrap).
    with pytest.warns(UserWarning, match="not positive definite"):
        p = GRFPrior(4, 4, kernel="gaussian", rho=2.0)
    assert p.n_floored > 0 and p.min_raw_eigenvalue < 0
    assert torch.linalg.eigvalsh(p.covariance()).min() > 0
    assert "n_floored" in repr(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default prior on a 16x16 map is a proper kernel: no warning
        q = GRFPrior(16, 16)
    assert q.n_floored == 0


def test_torus_distance_wraps():
    d = torus_distance(6, 8)
    assert d[0, 0] == 0 and d[0, 7] == 1 and d[5, 0] == 1 and d[3, 4] == 5  # 3-4-5 triangle at the antipode


@pytest.mark.parametrize("kernel", KERNELS)
def test_sample_covariance_matches_kernel(kernel):
    h, w, n = 4, 6, 20000
    p = prior(h, w, kernel=kernel, rho=1.5, variance=2.0)
    z = p.sample(n, 2, generator=torch.Generator().manual_seed(1))  # (n, 2, h, w)
    assert z.shape == (n, 2, h, w) and z.dtype == torch.float32
    x = z.double().reshape(2 * n, h * w)  # channels are independent draws
    emp = x.T @ x / x.shape[0]  # zero-mean prior: E[z z^T]
    cov = p.covariance()
    # Var of an empirical covariance entry is (S_ii S_jj + S_ij^2) / N: allow 5 standard errors.
    se = torch.sqrt((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None, :] + cov**2) / x.shape[0])
    assert ((emp - cov).abs() <= 5 * se).all(), f"max |err|/se = {((emp - cov).abs() / se).max():.2f}"
    assert x.mean(0).abs().max() < 5 * math.sqrt(2.0 / x.shape[0])


def test_sample_is_seedable():
    p = GRFPrior(8, 8)
    a = p.sample(3, 2, generator=torch.Generator().manual_seed(7))
    b = p.sample(3, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, p.sample(3, 2, generator=torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("kernel", KERNELS)
def test_rho_to_zero_gives_standard_normal_kl(kernel):
    h, w = 6, 8
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(4, 3, h, w, generator=gen, dtype=torch.float64)
    logvar = 0.3 * torch.randn(4, 3, h, w, generator=gen, dtype=torch.float64)
    target = std_normal_kl(mu, logvar, variance=1.7)
    errors = [(prior(h, w, kernel=kernel, rho=rho, variance=1.7).kl(mu, logvar) - target).abs().max()
              for rho in (0.5, 0.2, 0.05)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6 * target.abs().max()  # converges
    torch.testing.assert_close(prior(h, w, kernel=kernel, rho=0.0, variance=1.7).kl(mu, logvar), target)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    p = GRFPrior(6, 8, kernel="matern32", rho=0.8)
    # q = N(0, diag S) is not the prior (S is not diagonal), but the KL must be >= 0 and grow with |mu|.
    logvar = torch.full((1, 1, 6, 8), math.log(p.variance), dtype=torch.float64)
    base = p.kl(torch.zeros_like(logvar), logvar)
    assert base.item() >= 0
    assert p.kl(torch.ones_like(logvar), logvar).item() > base.item()
    white = GRFPrior(6, 8, rho=0.0)
    assert white.kl(torch.zeros_like(logvar), torch.zeros_like(logvar)).abs().item() < 1e-12


def test_gradients_flow_to_mu_logvar_and_learned_rho():
    p = GRFPrior(6, 8, kernel="exponential", rho=2.0, learn_rho=True, rho_bounds=(0.1, 10.0))
    mu = torch.randn(2, 3, 6, 8, requires_grad=True)
    logvar = torch.randn(2, 3, 6, 8, requires_grad=True)
    p.kl(mu, logvar).sum().backward()
    for t in (mu, logvar, p.log_rho):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # The learned-rho spectrum equals the fixed one at the same rho, and rho stays in its bounds.
    torch.testing.assert_close(p.spectrum(), GRFPrior(6, 8, rho=2.0).spectrum())
    with torch.no_grad():
        p.log_rho.fill_(10.0)
    assert p.rho.item() == pytest.approx(10.0)


def test_kl_under_autocast_is_float32_and_accurate():
    p = GRFPrior(8, 8)
    mu, logvar = torch.randn(2, 4, 8, 8), 0.2 * torch.randn(2, 4, 8, 8)
    ref = p.kl(mu, logvar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p.kl(mu.bfloat16(), logvar.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, p.kl(mu.bfloat16().float(), logvar.bfloat16().float()))
    assert torch.isfinite(ref).all()


def test_buffers_move_with_to_and_stay_out_of_state_dict():
    p = GRFPrior(6, 8)
    names = {n for n, _ in p.named_buffers()}
    assert {"spectrum_fixed", "distance"} <= names
    assert p.state_dict() == {} or all(not k.startswith("spectrum") for k in p.state_dict())
    moved = p.to(torch.device("meta"))
    assert all(b.device.type == "meta" for b in moved.buffers())


def test_bad_arguments_are_config_errors():
    for kwargs in ({"kernel": "cauchy"}, {"rho": -1.0}, {"variance": 0.0}, {"eps": 0.0},
                   {"rho": 0.0, "learn_rho": True}):
        with pytest.raises(models.ConfigError):
            GRFPrior(4, 4, **kwargs)


def test_vae_grf_with_rho_zero_is_a_map_latent_vae():
    torch.manual_seed(0)
    model = models.build_model("vae_grf", image_size=32, in_channels=1, rho=0.0, latent_channels=4)
    x = torch.rand(3, 1, 32, 32)
    model.eval()  # z = mu: the loss is deterministic
    out = model.loss(x)
    mu, logvar = model.encode(x)
    assert mu.shape == (3, 4, 4, 4)
    torch.testing.assert_close(out["kl"], std_normal_kl(mu.double(), logvar.double()).mean().float())
    torch.testing.assert_close(out["loss"], out["recon"] + model.config.beta * out["kl"])
    # A small rho is already close; a proper correlation length is not.
    close = models.build_model("vae_grf", image_size=32, in_channels=1, rho=0.05, latent_channels=4)
    close.load_state_dict(model.state_dict())
    torch.testing.assert_close(close.eval().loss(x)["kl"], out["kl"], rtol=1e-5, atol=0)


def test_vae_grf_learned_rho_gets_gradient_and_reports_rho():
    model = models.build_model("vae_grf", image_size=32, in_channels=3, learn_rho=True, latent_channels=4)
    out = model.loss(torch.rand(2, 3, 32, 32))
    out["loss"].backward()
    assert "rho" in out and model.prior.log_rho.grad is not None
    with pytest.raises(models.ConfigError, match="kernel"):
        models.build_model("vae_grf", image_size=32, kernel="cauchy")
    with pytest.raises(models.ConfigError, match="multiple of 8"):
        models.build_model("vae_grf", image_size=36)
