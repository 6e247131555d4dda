"""Tests of every registered model through the public interface (models.MODEL_NAMES).

Models are built at 32 px with the small settings of TINY_OVERRIDES so the whole file runs
in seconds on a shared CPU. A model's engineer may edit its entry (e.g. fewer/narrower
layers); the interface tests below must pass unchanged for every name in the registry.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import roc_auc_score

import models
from models.base import AnomalyModel, accepts_target
from models.errors import ConfigError
from models.layers import BatchNorm2d
from pipeline.defects import corrupt
from pipeline.train import TrainConfig, fit, seed_everything

SIZE = 32  # px; every model's stride / patch divides it

# Small settings per model, used by every test here. Keep the keys in sync with the registry.
TINY_OVERRIDES: dict[str, dict] = {
    "cae": {"widths": (8, 16, 32), "latent_dim": 32},
    "vae": {"widths": (8, 16, 32), "latent_dim": 32},
    "vit_vae": {"patch_size": 8, "dim": 32, "depth": 1, "decoder_depth": 1, "heads": 2},
    "vae_grf": {"widths": (8, 16, 32), "latent_channels": 4},
}


def _build(name: str, in_channels: int = 3, **extra) -> AnomalyModel:
    overrides = {**TINY_OVERRIDES.get(name, {}), **extra}
    return models.build_model(name, image_size=SIZE, in_channels=in_channels, **overrides)


def _terms_are_finite_scalars(out: dict) -> None:
    assert "loss" in out, f"loss() returned {sorted(out)} without 'loss'"
    for key, value in out.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, f"term {key!r} is not a scalar tensor"
        assert torch.isfinite(value), f"term {key!r} = {value}"


def test_registry_names():
    """The contract's four models are registered (a fifth is welcome: one file + one registry line;
    without a TINY_OVERRIDES entry it is tested at its defaults), each with its display label."""
    assert models.MODEL_NAMES == tuple(models.MODELS)
    assert models.MODEL_NAMES[:4] == ("cae", "vae", "vit_vae", "vae_grf")
    assert [models.model_label(n) for n in models.MODEL_NAMES[:4]] == ["CAE", "VAE", "ViT-VAE", "VAE-GRF"]
    assert set(TINY_OVERRIDES) <= set(models.MODEL_NAMES)
    for name, cls in models.MODELS.items():  # every model implements the interface itself
        assert cls.loss is not AnomalyModel.loss and cls.reconstruct is not AnomalyModel.reconstruct, name


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_shapes_finite_loss_and_map(name, in_channels):
    torch.manual_seed(0)
    model = _build(name, in_channels)
    x = torch.rand(2, in_channels, SIZE, SIZE)
    _terms_are_finite_scalars(model.loss(x))
    model.eval()
    with torch.no_grad():
        x_hat = model.reconstruct(x)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    maps = model.anomaly_map(x)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    scores = model.anomaly_score(x)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = _build(name).train()
    model.loss(torch.rand(4, 3, SIZE, SIZE))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient in {bad}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not zero, f"gradient is exactly zero for {zero}"


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_constant_images_stay_finite(name, value):
    torch.manual_seed(0)
    model = _build(name).train()
    x = torch.full((4, 3, SIZE, SIZE), value)
    out = model.loss(x)
    _terms_are_finite_scalars(out)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.anomaly_map(x)).all()


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_eval_is_deterministic_and_keeps_mode(name):
    torch.manual_seed(0)
    model = _build(name).train()
    x = torch.rand(3, 3, SIZE, SIZE)
    a, b = model.anomaly_map(x), model.anomaly_map(x)
    assert torch.equal(a, b)
    assert model.training, "anomaly_map must restore training mode"
    # A batch of one gives the same map as inside a batch (no batch statistics at test time).
    assert torch.allclose(model.anomaly_map(x[:1])[0], a[0], atol=1e-5)


def _train(model: AnomalyModel, data: torch.Tensor, steps: int, *, lr: float = 3e-3, batch: int = 32) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _step in range(steps):
        idx = torch.randint(0, len(data), (batch,))
        loss = model.loss(data[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_save_and_load_reproduce_maps(name, tmp_path):
    torch.manual_seed(0)
    model = _build(name)
    x = smooth_images(16, 3, SIZE, torch.Generator().manual_seed(1))
    _train(model, x, steps=3, batch=8)  # moves weights and BatchNorm statistics off their init
    maps = model.anomaly_map(x)
    path = tmp_path / "model.pt"
    # The checkpoint format (pipeline/checkpoints.py owns the real save/load).
    torch.save({"model": name, "config": model.config.to_dict(), "state_dict": model.state_dict(),
                "row": None, "format": 1}, path)
    ckpt = torch.load(path, weights_only=True)
    config = json.loads(json.dumps(ckpt["config"]))  # also survives the JSON round trip of the CSV row
    loaded = models.build_model(ckpt["model"], **config)
    loaded.load_state_dict(ckpt["state_dict"])
    assert loaded.config == model.config
    assert torch.allclose(loaded.anomaly_map(x), maps, atol=1e-6)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = _build(name)
    x = smooth_images(16, 3, SIZE, torch.Generator().manual_seed(2))

    def loss_now() -> float:
        torch.manual_seed(123)  # same reparameterisation noise before and after
        with torch.no_grad():
            return model.loss(x)["loss"].item()

    model.train()
    before = loss_now()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        loss = model.loss(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert after < 0.9 * before, f"{name}: loss {before:.4g} -> {after:.4g} after 8 Adam steps"


@pytest.mark.parametrize("hw", [(48, 96), (96, 48)])
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_rectangular_inputs_train_score_and_reload(name, hw, tmp_path):
    """Every model takes H != W (issue 15): a few steps lower its loss, maps and scores have the
    input's shape, the config survives JSON as (H, W), and a reloaded model gives the same maps."""
    torch.manual_seed(0)
    h, w = hw
    model = models.build_model(name, image_size=hw, in_channels=3, **TINY_OVERRIDES.get(name, {}))
    assert (model.config.height, model.config.width) == hw
    x = smooth_images(16, 3, max(hw), torch.Generator().manual_seed(3))[..., :h, :w]  # (16, 3, H, W)
    torch.manual_seed(123)
    with torch.no_grad():
        before = model.loss(x)["loss"].item()
    _train(model, x, steps=8, batch=16)
    torch.manual_seed(123)
    with torch.no_grad():
        after = model.loss(x)["loss"].item()
    assert after < 0.9 * before, f"{name} at {h}x{w}: loss {before:.4g} -> {after:.4g} after 8 Adam steps"
    maps = model.anomaly_map(x[:3])
    assert maps.shape == (3, h, w) and torch.isfinite(maps).all()
    assert model.anomaly_score(x[:3]).shape == (3,)
    config = json.loads(json.dumps(model.config.to_dict()))  # as in the checkpoint and the row
    assert config["image_size"] == [h, w]
    loaded = models.build_model(name, **config)
    loaded.load_state_dict(model.state_dict())
    assert loaded.config == model.config and loaded.config.image_size == hw
    assert torch.allclose(loaded.anomaly_map(x[:3]), maps, atol=1e-6)
    if name == "vae_grf":  # the prior lives on the latent map's h x w torus
        assert (model.prior.height, model.prior.width) == (h // 8, w // 8)
    with pytest.raises(AssertionError, match="built for|expected"):
        model.loss(x.transpose(-1, -2))  # the other orientation is another model: said, not broadcast


def test_a_square_size_has_one_spelling():
    """(S, S) is stored as S, so a square config hashes as it always did (committed rows)."""
    a = models.model_config("cae", image_size=(64, 64))
    assert a.image_size == 64 and a.to_dict() == models.model_config("cae", image_size=64).to_dict()
    with pytest.raises(ConfigError, match="height and width"):
        models.model_config("cae", image_size=(64, 64, 3))
    with pytest.raises(ConfigError, match="at least 16 px on each side"):
        models.model_config("cae", image_size=(16, 0))


# ---------------------------------------------------------------- configuration errors


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        models.build_model("resnet")
    for name in models.MODEL_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_unknown_override_lists_valid_settings(name):
    with pytest.raises(ConfigError) as err:
        models.build_model(name, image_size=SIZE, not_a_setting=1)
    assert "not_a_setting" in str(err.value) and "image_size" in str(err.value)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_bad_image_size_and_channels(name):
    with pytest.raises(ConfigError, match="image_size"):
        models.build_model(name, image_size=33, **TINY_OVERRIDES.get(name, {}))
    with pytest.raises(ConfigError, match="in_channels"):
        models.build_model(name, image_size=SIZE, in_channels=2, **TINY_OVERRIDES.get(name, {}))


@pytest.mark.parametrize("name", ["cae", "vae"])
def test_conv_config_errors_name_valid_values(name):
    with pytest.raises(ConfigError) as err:
        models.build_model(name, image_size=100)  # default widths: stride 16
    msg = str(err.value)
    assert "multiple of 16" in msg and "128" in msg and "widths" in msg
    with pytest.raises(ConfigError, match="widths"):
        models.build_model(name, image_size=64, widths=())
    with pytest.raises(ConfigError, match="latent_dim"):
        models.build_model(name, image_size=64, latent_dim=0)
    for size in (64, 128, 256):  # the sizes the issue asks for, with default settings
        models.model_config(name, image_size=size)


def test_vae_loss_weighting_and_bounded_logvar():
    torch.manual_seed(0)
    model = _build("vae", beta=0.0).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    out = model.loss(x)
    assert torch.allclose(out["loss"], out["recon"])  # beta = 0: a deterministic autoencoder in eval
    x_hat = model.reconstruct(x)
    assert torch.allclose(out["recon"], (x_hat - x).pow(2).sum(dim=(1, 2, 3)).mean(), rtol=1e-5)
    model.config.beta = 0.5
    out = model.loss(x)
    assert torch.allclose(out["loss"], out["recon"] + 0.5 * out["kl"], rtol=1e-5)
    assert out["kl"] >= 0
    # Whatever the encoder outputs, the log-variance stays inside its bounds.
    with torch.no_grad():
        for p in model.to_latent.parameters():
            p.mul_(1e4)
        mu, logvar = model.encode(x * 100)
    assert logvar.abs().max() <= models.variational.LOGVAR_LIMIT and torch.isfinite(mu).all()
    assert torch.allclose(models.variational.standard_normal_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


# ---------------------------------------------------------------- detection sanity check


def smooth_images(n: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, C, S, S) smooth 'normal' images in [0.05, 0.75]: a random linear gradient plus two
    soft Gaussian blobs, a slightly different tint per channel."""
    t = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")  # (S, S)

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    img = 0.4 + 0.25 * (u(n, 1, 1, lo=-1) * (xx - 0.5) + u(n, 1, 1, lo=-1) * (yy - 0.5))  # (n, S, S)
    for _ in range(2):
        cy, cx, w, a = u(n, 1, 1), u(n, 1, 1), u(n, 1, 1, lo=0.15, hi=0.35), u(n, 1, 1, lo=-0.15, hi=0.15)
        img = img + a * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w**2))
    tint = u(n, channels, 1, 1, lo=0.85, hi=1.0)
    return (img.unsqueeze(1) * tint).clamp(0.05, 0.75)  # (n, C, S, S)


def add_bright_patch(images: torch.Tensor, gen: torch.Generator, side: int = 6) -> torch.Tensor:
    """A copy of ``images`` with one bright square (value 1) per image at a random place."""
    out = images.clone()
    size = images.shape[-1]
    for i in range(len(out)):
        y, x = torch.randint(2, size - side - 2, (2,), generator=gen).tolist()
        out[i, :, y : y + side, x : x + side] = 1.0
    return out


def test_detection_task_is_not_trivial():
    """The check below means something: the raw images alone do not separate the classes by
    their mean (what a constant reconstruction would score), and an inverted score fails."""
    gen = torch.Generator().manual_seed(0)
    normal = smooth_images(64, 3, SIZE, gen)
    defect = add_bright_patch(smooth_images(64, 3, SIZE, gen), gen)
    labels = [0] * 64 + [1] * 64
    scores = torch.cat([normal, defect]).flatten(1).mean(1)
    assert roc_auc_score(labels, scores) < 0.95  # ... brightness alone is not a perfect detector
    assert roc_auc_score(labels, -scores) < 0.9  # an inverted score fails the 0.9 bar


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_detection_sanity(name):
    """After a short training on normal images, defective ones score higher (AUROC > 0.9).
    An inverted score would give AUROC < 0.1 and a constant one 0.5, so both fail."""
    torch.manual_seed(0)
    model = _build(name)
    gen = torch.Generator().manual_seed(0)
    train = smooth_images(256, 3, SIZE, gen)
    _train(model, train, steps=150)
    normal = smooth_images(32, 3, SIZE, gen)
    defect = add_bright_patch(smooth_images(32, 3, SIZE, gen), gen)
    scores = model.anomaly_score(torch.cat([normal, defect]))
    assert torch.isfinite(scores).all() and scores.std() > 0
    auroc = roc_auc_score([0] * 32 + [1] * 32, scores.numpy())
    assert auroc > 0.9 and not math.isnan(auroc), f"{name}: image AUROC {auroc:.3f} after short training"


def test_models_size_multiple_is_the_lcm_of_strides_and_patches():
    assert models.size_multiple(models.MODEL_NAMES) == 16  # CNNs 16, VAE-GRF 8, ViT patch 16
    assert models.size_multiple(["vae_grf"]) == 8
    assert models.size_multiple(["vae_grf", "vit_vae"], {"vit_vae": {"patch_size": 12}}) == 24


def test_batchnorm_is_unchanged_wherever_torch_could_train_it():
    """The fix touches only the one-value case: elsewhere outputs, running statistics and
    state_dict keys are torch's own (committed results stay reproducible)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2)
    ours, theirs = BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert torch.equal(ours(x), theirs(x)) and torch.equal(ours.running_var, theirs.running_var)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    one = torch.randn(1, 3, 1, 1)
    assert torch.equal(ours(one), ours.eval()(one))  # one value: normalised as in evaluation


# ---------------------------------------------------------------- repair training (a target other than x)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_loss_compares_the_reconstruction_of_x_with_the_target(name):
    """loss(x, target): the reconstruction of x, its error against target (None = x); a VAE's KL
    is q(z|x)'s, whatever the target."""
    torch.manual_seed(0)
    model = _build(name).eval()
    assert accepts_target(type(model))
    gen = torch.Generator().manual_seed(4)
    x, t = smooth_images(3, 3, SIZE, gen), smooth_images(3, 3, SIZE, gen)
    plain, same, other = model.loss(x), model.loss(x, target=x), model.loss(x, target=t)
    assert plain.keys() == same.keys() == other.keys() and all(torch.equal(plain[k], same[k]) for k in plain)
    if "kl" in plain:
        assert torch.equal(other["kl"], plain["kl"])
    if "recon" in plain:  # the error's normalisation is the model's own; its ratio is not
        with torch.no_grad():
            x_hat = model.reconstruct(x)
        ratio = ((x_hat - t).pow(2).sum() / (x_hat - x).pow(2).sum()).item()
        assert (other["recon"] / plain["recon"]).item() == pytest.approx(ratio, rel=1e-4)
    with pytest.raises(AssertionError, match="differ in shape"):
        model.loss(x, target=t[:2])


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_repair_training_lowers_the_repair_loss_and_is_seeded(name):
    """fit with repair 0.5: the model gets better at giving back the clean image of a corrupted
    one, and two fits with one seed end with the same weights."""
    images = (smooth_images(16, 3, SIZE, torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    clean = images.float() / 255
    corrupted, _ = corrupt(clean, 1.0, torch.Generator().manual_seed(5))
    cfg = TrainConfig(min_steps=0, epochs=5, batch_size=8, lr=3e-3, repair=0.5, progress=False, device="cpu")

    def repair_loss(model) -> float:
        torch.manual_seed(123)  # same reparameterisation noise before and after
        with torch.no_grad():
            return model.train().loss(corrupted, target=clean)["loss"].item()

    weights = []
    for _ in range(2):
        seed_everything(0)
        model = _build(name)
        before = repair_loss(model)
        history = fit(model, SimpleNamespace(images=images, category="smooth"), None, cfg)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    after = repair_loss(model)  # (train mode: moves the BatchNorm statistics, hence the copies)
    assert history["steps"] == 10 and after < 0.9 * before, f"{name}: repair loss {before:.4g} -> {after:.4g}"
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
