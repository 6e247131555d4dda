"""Synthetic defects for repair training: smooth random masks filled with foreign content, pasted
with random opacity onto some images of a training batch (``TrainConfig.repair``).

The idea is DRAEM's (Zavrtanik et al., "DRAEM: A discriminatively trained reconstruction
embedding for surface anomaly detection", ICCV 2021, Sec. 3.3): a model trained to turn a
corrupted normal image back into the clean one learns to replace what does not belong instead
of copying it through, which is what a plain autoencoder with a wide bottleneck does with a
real defect. As there:

- the mask is Perlin (gradient) noise thresholded at 0.5, with 2^1..2^5 lattice cells per side,
  drawn independently per axis, and turned by a random angle (DRAEM rotates its noise image);
- the fill is pasted with a random opacity: x' = (1 - m) x + m ((1 - a) x + a fill), with
  a ~ U(0.2, 1) (DRAEM's beta ~ U(0, 0.8) is the weight of the image, 1 - a); its ablation
  found the opacity the single most useful augmentation.

The fills (``kinds``) are made here, never read from files or test images: ``"texture"``
(fractal Perlin noise or stripes between two random colours), ``"patch"`` (another image of
the same batch, rolled, mirrored and, when square, transposed: content of the right
distribution in the wrong place), ``"colour"`` (one random flat colour; DRAEM's ablation
found these nearly as good as textures) and ``"mixed"`` (each corrupted image draws one of
the three). A grayscale image (one channel, or three equal ones) gets a grayscale fill: a
coloured blotch on a gray photo would be trivially easy and unlike any real defect.

Everything is batched on the batch's device (a loop over octaves, never over images) and
drawn from the ``generator`` given, never from torch's global RNG, so turning repair on
changes neither the data order nor the model's initialisation.
"""
from __future__ import annotations

import math
import numbers

import torch

from models.errors import ConfigError

FILLS = ("texture", "patch", "colour")
DEFECT_KINDS = ("mixed", *FILLS)
MASK_THRESHOLD = 0.5  # on Perlin noise in [-1, 1], as DRAEM
MASK_CELLS = (1, 5)  # log2 of the lattice cells per side of a mask: 2..32, as DRAEM
OPACITY = (0.2, 1.0)  # the fill's weight a in the blend (DRAEM: 1 - beta, beta ~ U(0, 0.8))
TEXTURE_OCTAVES = 3  # fractal noise: octaves of halving amplitude
# Side of the periodic gradient lattice, a power of 2. Turned coordinates span at most
# sqrt(2) x 32 < 46 cells, so no image sees the lattice repeat.
LATTICE = 64


def check_repair(fraction, kinds) -> None:
    """A ``ConfigError`` (one sentence) unless ``fraction`` is a number in [0, 1] and ``kinds``
    one of ``DEFECT_KINDS``."""
    if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(fraction)
            or not 0 <= fraction <= 1):
        raise ConfigError(f"repair must be a fraction from 0 to 1 (the share of each training batch given "
                          f"synthetic defects; 0 = off), got {fraction!r}.")
    if kinds not in DEFECT_KINDS:
        raise ConfigError(f"defects {kinds!r} is unknown; valid: {', '.join(DEFECT_KINDS)}.")


def defect_count(fraction: float, batch: int) -> int:
    """How many of ``batch`` images get a defect: round(fraction * batch), at least 1 when fraction > 0."""
    return 0 if fraction <= 0 or batch == 0 else min(batch, max(1, round(fraction * batch)))


def corrupt(x: torch.Tensor, fraction: float, generator: torch.Generator, *,
            kinds: str = "mixed") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) in [0, 1] -> (x_corrupt, mask): ``defect_count(fraction, B)`` images, chosen
    by ``generator`` (a ``torch.Generator`` on x's device), get one defect each.

    mask is (B, 1, H, W) of x's dtype, 1 where a defect was pasted (non-empty for every
    corrupted image, all zero for the others). Every pixel outside the mask is x's own value,
    bit for bit; x_corrupt has x's shape, dtype, device and memory format. With fraction 0, x
    itself is returned and nothing is drawn.
    """
    check_repair(fraction, kinds)
    assert x.ndim == 4, f"corrupt expects a (B, C, H, W) batch, got shape {tuple(x.shape)}"
    assert generator.device.type == x.device.type, (
        f"the generator is on {generator.device}, the batch on {x.device}: make the generator on the batch's device"
    )
    b, _, h, w = x.shape
    k = defect_count(fraction, b)
    mask = torch.zeros((b, 1, h, w), dtype=x.dtype, device=x.device)
    if k == 0:
        return x, mask
    picked = torch.rand(b, generator=generator, device=x.device).argsort()[:k].sort().values  # (k,)
    work = torch.promote_types(x.dtype, torch.float32)  # bf16 / fp16 round-trip exactly through it
    clean = x.index_select(0, picked).to(work)  # (k, C, H, W)
    hit = defect_masks(k, h, w, generator, x.device)  # (k, 1, H, W) bool
    fill = fills(x.to(work), picked, kinds, generator)  # (k, C, H, W)
    gray = (clean == clean[:, :1]).flatten(1).all(dim=1).view(k, 1, 1, 1)  # C = 1, or 3 equal channels
    fill = torch.where(gray, fill.mean(dim=1, keepdim=True).expand_as(fill), fill)
    opacity = uniform((k, 1, 1, 1), *OPACITY, generator=generator, device=x.device).to(work)
    pasted = torch.where(hit, torch.lerp(clean, fill, opacity).clamp(0, 1), clean)
    out = x.clone()  # keeps x's memory format; the images not picked stay x's, bit for bit
    out[picked] = pasted.to(x.dtype)
    mask[picked] = hit.to(x.dtype)
    return out, mask


def uniform(shape, lo: float, hi: float, *, generator: torch.Generator, device) -> torch.Tensor:
    """Uniform floats in [lo, hi) from ``generator``."""
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def perlin_noise(cells: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Gradient (Perlin) noise for n images -> (n, H, W) float32 in about [-1, 1].

    ``cells`` (n, 2): lattice cells along the turned y and x axes, per image (several scales
    in one batch). Each image gets its own random angle, lattice offset and unit gradients on
    a periodic ``LATTICE`` x ``LATTICE`` lattice; coordinates are in units of the longer side,
    so cells stay square on a rectangle. The quintic fade 6t^5 - 15t^4 + 10t^3 (Perlin,
    "Improving noise", SIGGRAPH 2002) makes it smooth across cell borders.
    """
    n, device = cells.shape[0], cells.device
    long_side = max(height, width)
    py = ((torch.arange(height, device=device) + 0.5 - height / 2) / long_side).view(1, height, 1)  # (1, H, 1)
    px = ((torch.arange(width, device=device) + 0.5 - width / 2) / long_side).view(1, 1, width)  # (1, 1, W)
    angle = uniform((n, 1, 1), 0, math.pi, generator=generator, device=device)
    offset = uniform((n, 2, 1, 1), 0, LATTICE, generator=generator, device=device)
    gradients = uniform((n, LATTICE * LATTICE), 0, 2 * math.pi, generator=generator, device=device)
    cos, sin = angle.cos(), angle.sin()
    u = (cos * py - sin * px) * cells[:, 0].view(n, 1, 1) + offset[:, 0]  # (n, H, W), lattice units
    v = (sin * py + cos * px) * cells[:, 1].view(n, 1, 1) + offset[:, 1]  # (n, H, W)
    iu, iv = u.floor(), v.floor()
    fu, fv = u - iu, v - iv  # position inside the cell, [0, 1)
    wrap = LATTICE - 1  # LATTICE is a power of 2: "& wrap" is "% LATTICE", and cheaper
    rows = [(iu.long() + d & wrap).mul_(LATTICE).view(n, -1) for d in (0, 1)]  # (n, H*W) each
    cols = [(iv.long() + d & wrap).view(n, -1) for d in (0, 1)]
    gx, gy = gradients.cos(), gradients.sin()  # unit gradient of each lattice site, (n, LATTICE^2)

    def corner(du: int, dv: int) -> torch.Tensor:  # the ramp of one cell corner's gradient
        site = rows[du] + cols[dv]  # (n, H*W)
        ramp = gx.gather(1, site).view_as(fu) * (fu - du)
        return ramp.addcmul_(gy.gather(1, site).view_as(fv), fv - dv)

    fade_u, fade_v = (t * t * t * (t * (6 * t - 15) + 10) for t in (fu, fv))
    top = torch.lerp(corner(0, 0), corner(1, 0), fade_u)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), fade_u)
    return math.sqrt(2) * torch.lerp(top, bottom, fade_v)  # (n, H, W)


def defect_masks(n: int, height: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """(n, 1, H, W) bool: thresholded Perlin noise at a random scale per image, never empty."""
    lo, hi = MASK_CELLS
    cells = 2 ** torch.randint(lo, hi + 1, (n, 2), generator=generator, device=device)  # (n, 2): 2..32 per axis
    noise = perlin_noise(cells.float(), height, width, generator)  # (n, H, W)
    peak = noise.flatten(1).amax(dim=1).view(n, 1, 1)
    low = noise.flatten(1).amin(dim=1).view(n, 1, 1)
    # Noise that stays under the threshold keeps the blob around its peak instead: a
    # threshold at or below each image's maximum is never empty, with no redraw loop.
    threshold = torch.minimum(torch.full_like(peak, MASK_THRESHOLD), peak - 0.1 * (peak - low))
    return (noise >= threshold).unsqueeze(1)


def fills(x: torch.Tensor, picked: torch.Tensor, kinds: str, generator: torch.Generator) -> torch.Tensor:
    """(k, C, H, W) what is pasted into the images ``picked`` of the batch ``x``: each image's fill
    of ``kinds``, or for "mixed" one of the three drawn per image."""
    k, (_, c, h, w) = picked.numel(), x.shape
    make = {
        "texture": lambda: texture_fill(k, c, h, w, generator, x.device),
        "patch": lambda: patch_fill(x, picked, generator),
        "colour": lambda: uniform((k, c, 1, 1), 0, 1, generator=generator, device=x.device).expand(k, c, h, w),
    }
    if kinds != "mixed":
        return make[kinds]().to(x.dtype)
    choice = torch.randint(0, len(FILLS), (k, 1, 1, 1), generator=generator, device=x.device)
    out = make[FILLS[0]]().to(x.dtype)
    for i, kind in enumerate(FILLS[1:], start=1):  # all three made for all k: a few ms, batched
        out = torch.where(choice == i, make[kind]().to(x.dtype), out)
    return out


def texture_fill(n: int, channels: int, height: int, width: int, generator: torch.Generator,
                 device) -> torch.Tensor:
    """(n, C, H, W) in [0, 1]: per image, fractal Perlin noise or stripes, shaded between two
    random colours."""
    base = 2 ** torch.randint(1, 4, (n, 1), generator=generator, device=device).float()  # 2..8 cells
    noise = sum(0.5**o * perlin_noise((base * 2**o).expand(n, 2), height, width, generator)
                for o in range(TEXTURE_OCTAVES))  # (n, H, W)
    flat = noise.flatten(1)
    low, high = flat.amin(1).view(n, 1, 1), flat.amax(1).view(n, 1, 1)
    noise = (noise - low) / (high - low).clamp_min(1e-6)  # [0, 1] per image
    long_side = max(height, width)
    y = (torch.arange(height, device=device) / long_side).view(1, height, 1)
    x = (torch.arange(width, device=device) / long_side).view(1, 1, width)
    turn = uniform((n, 1, 1), 0, math.pi, generator=generator, device=device)
    cycles = uniform((n, 1, 1), 2, 12, generator=generator, device=device)  # stripes per long side
    phase = uniform((n, 1, 1), 0, 2 * math.pi, generator=generator, device=device)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * cycles * (y * turn.cos() + x * turn.sin()) + phase)  # (n, H, W)
    use_stripes = torch.rand((n, 1, 1), generator=generator, device=device) < 0.5
    shade = torch.where(use_stripes, stripes, noise).unsqueeze(1)  # (n, 1, H, W)
    colours = torch.rand((2, n, channels, 1, 1), generator=generator, device=device)
    return torch.lerp(colours[0], colours[1], shade)  # (n, C, H, W)


def patch_fill(x: torch.Tensor, picked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(k, C, H, W): for each picked image, another image of the batch (itself in a batch of
    one), rolled by a random shift, mirrored on each axis with p = 1/2 and, when square,
    transposed with p = 1/2."""
    b, c, h, w = x.shape
    k, device = picked.numel(), x.device
    step = torch.randint(1, max(b, 2), (k,), generator=generator, device=device) % b  # never 0 when b > 1
    source = (picked + step) % b
    shift = torch.randint(0, max(h, w), (2, k, 1), generator=generator, device=device)
    mirror = torch.randint(0, 2, (3, k), generator=generator, device=device)
    sign = (1 - 2 * mirror[:2]).unsqueeze(-1)  # (2, k, 1): +1 or -1 per axis
    rows = (sign[0] * torch.arange(h, device=device) + shift[0]) % h  # (k, H)
    cols = (sign[1] * torch.arange(w, device=device) + shift[1]) % w  # (k, W)
    patch = x[source.view(k, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1),
              rows.view(k, 1, h, 1), cols.view(k, 1, 1, w)]  # (k, C, H, W)
    if h == w:
        patch = torch.where(mirror[2].view(k, 1, 1, 1) == 1, patch.transpose(-1, -2), patch)
    return patch
