"""pipeline/augment.py: batched random symmetries for textures, wired into fit via TrainConfig.augment."""
import pytest
import torch

from models.errors import ConfigError
from pipeline.augment import AUGMENTATIONS, augment_batch
from pipeline.train import TrainConfig


def test_none_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert augment_batch(x, "none") is x


@pytest.mark.parametrize("mode,n_distinct", [("flip", 4), ("dihedral", 8)])
def test_each_image_gets_a_symmetry_of_the_square(mode, n_distinct):
    torch.manual_seed(0)
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(256, 3, 1, 1)  # (B, C, 4, 4), all the same image
    y = augment_batch(x, mode)
    assert y.shape == x.shape and y.is_contiguous()
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)  # pixels only move
    assert torch.equal(y[:, 0], y[:, 2])  # channels move together
    assert len({tuple(t.flatten().tolist()) for t in y}) == n_distinct


def test_unknown_mode_is_a_config_error():
    assert "dihedral" in AUGMENTATIONS
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="rotate45").validate()
