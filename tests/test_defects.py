"""The synthetic-defect generator (pipeline/defects.py): where it pastes, what it leaves alone,
that it is seeded by its generator alone, and its fills."""
import pytest
import torch

from models.errors import ConfigError
from pipeline.defects import DEFECT_KINDS, corrupt, defect_count, defect_masks, perlin_noise


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(b=8, c=3, h=32, w=32, seed=1):
    return torch.rand((b, c, h, w), generator=gen(seed)) * 0.6 + 0.2


def test_fraction_zero_returns_the_batch_itself_and_draws_nothing():
    x, g = batch(), gen()
    state, global_state = g.get_state(), torch.get_rng_state()
    out, mask = corrupt(x, 0.0, g)
    assert out is x and mask.shape == (8, 1, 32, 32) and not mask.any()
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.parametrize("kinds", DEFECT_KINDS)
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 1.0])
def test_masks_are_non_empty_exactly_where_pasted_and_the_rest_is_untouched(fraction, kinds):
    x = batch()
    out, mask = corrupt(x, fraction, gen(), kinds=kinds)
    hit = mask.flatten(1).sum(1) > 0  # (B,)
    assert int(hit.sum()) == defect_count(fraction, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    outside = mask.expand_as(x) == 0
    assert torch.equal(out[outside], x[outside])  # bit-equal outside every mask, clean images included
    assert torch.equal(out[~hit], x[~hit])
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(changed, hit)  # every mask pasted something
    assert out.min() >= 0 and out.max() <= 1


def test_defect_count_rounds_and_keeps_at_least_one():
    assert [defect_count(f, 8) for f in (0, 0.01, 0.25, 0.5, 0.99, 1)] == [0, 1, 2, 4, 8, 8]
    assert defect_count(0.5, 1) == 1 and defect_count(0.5, 0) == 0


def test_deterministic_per_generator_and_never_the_global_rng():
    x = batch()
    global_state = torch.get_rng_state()
    a, b, c = (corrupt(x, 0.5, gen(s)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(torch.get_rng_state(), global_state)
    g = gen(7)  # successive calls on one generator draw new defects
    assert not torch.equal(corrupt(x, 0.5, g)[1], corrupt(x, 0.5, g)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_shape_dtype_device_and_memory_format_are_kept(dtype):
    x = batch(b=4, h=32, w=48).to(dtype).contiguous(memory_format=torch.channels_last)
    out, mask = corrupt(x, 0.5, gen())
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert mask.shape == (4, 1, 32, 48) and mask.dtype == dtype
    plain, _ = corrupt(x.contiguous(), 0.5, gen())
    assert plain.is_contiguous() and torch.equal(plain, out)  # the layout changes nothing else


@pytest.mark.parametrize("kinds", DEFECT_KINDS)
def test_gray_images_get_gray_defects(kinds):
    gray = batch(b=6, c=1)
    out, mask = corrupt(gray, 1.0, gen(), kinds=kinds)
    assert out.shape == gray.shape and (mask.flatten(1).sum(1) > 0).all()
    three = gray.expand(-1, 3, -1, -1).contiguous()  # a grayscale category replicated to RGB
    out3, mask3 = corrupt(three, 1.0, gen(), kinds=kinds)
    assert torch.equal(out3[:, 0], out3[:, 1]) and torch.equal(out3[:, 1], out3[:, 2])
    assert (out3 != three).any()
    colour, _ = corrupt(batch(b=6), 1.0, gen(), kinds="colour")
    assert not torch.equal(colour[:, 0], colour[:, 1])  # a colour image gets coloured ones


def constant_images(values, c=3, size=32):
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, c, size, size).contiguous()


def inside(out, mask, i):
    return out[i][mask[i].expand_as(out[i]) == 1].view(out.shape[1], -1)  # (C, pixels in the mask)


def test_colour_fills_are_one_flat_colour_per_image():
    x = constant_images([0.5] * 6)
    out, mask = corrupt(x, 1.0, gen(), kinds="colour")
    for i in range(6):
        values = inside(out, mask, i)
        assert torch.allclose(values, values[:, :1]) and not torch.allclose(values, torch.tensor(0.5))


def test_texture_fills_vary_inside_the_mask():
    x = constant_images([0.5] * 6)
    out, mask = corrupt(x, 1.0, gen(), kinds="texture")
    assert all(inside(out, mask, i).std(dim=1).max() > 1e-3 for i in range(6) if mask[i].sum() > 4)


def test_patch_fills_are_another_image_of_the_batch():
    """Image i of value v_i gets (1 - a) v_i + a v_j, one other image j, opacity a in [0.2, 1]."""
    values = [0.1, 0.3, 0.5, 0.7, 0.9]
    x = constant_images(values)
    out, mask = corrupt(x, 1.0, gen(), kinds="patch")
    for i, v in enumerate(values):
        pasted = inside(out, mask, i)
        assert torch.allclose(pasted, pasted[:, :1])  # one source, one opacity
        blends = [(pasted[0, 0] - (1 - a) * v) / a for a in torch.linspace(0.2, 1, 801)]
        sources = {j for j, u in enumerate(values) if any(abs(s - u) < 2e-3 for s in blends)}
        assert sources and i not in sources


def test_masks_are_smooth_blobs_at_several_scales_and_never_empty():
    masks = defect_masks(200, 64, 64, gen(), "cpu")
    share = masks.float().mean(dim=(1, 2, 3))
    assert (share > 0).all() and share.max() < 0.6
    assert share.std() > 0.01  # several scales, not one pattern
    # Blobs: a mask pixel's right neighbour is often a mask pixel too (for salt noise: the share, ~0.05).
    same = (masks[..., 1:] & masks[..., :-1]).sum() / masks[..., :-1].sum()
    assert same > 0.4 and same > 5 * share.mean()
    noise = perlin_noise(torch.full((4, 2), 4.0), 32, 80, gen())
    assert noise.shape == (4, 32, 80) and noise.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "half"])
def test_a_bad_fraction_is_one_sentence(bad):
    with pytest.raises(ConfigError, match=r"^repair must be a fraction from 0 to 1 .*got .*\.$"):
        corrupt(batch(), bad, gen())


def test_a_bad_kind_is_one_sentence_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^defects 'scratch' is unknown; valid: mixed, texture, patch, colour\.$"):
        corrupt(batch(), 0.5, gen(), kinds="scratch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_it_stays_on_the_device_and_is_deterministic():
    x = batch().cuda()
    a = corrupt(x, 0.5, torch.Generator(device="cuda").manual_seed(3))
    b = corrupt(x, 0.5, torch.Generator(device="cuda").manual_seed(3))
    assert a[0].is_cuda and a[1].is_cuda and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outside = a[1].expand_as(x) == 0
    assert torch.equal(a[0][outside], x[outside])
