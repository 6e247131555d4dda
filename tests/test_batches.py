"""Batching shared by training and evaluation (pipeline/batches.py): which indices make a batch,
float batches on the device, the bf16 and NHWC rules."""
import pytest
import torch

import models
from pipeline.batches import BatchSource, autocast, batch_indices, has_conv, prefers_channels_last

TINY_CAE = {"widths": (8, 16), "latent_dim": 16}


def test_training_order_is_a_seeded_permutation_and_evaluation_keeps_the_order():
    first = torch.cat(batch_indices(10, 4, torch.Generator().manual_seed(0)))
    again = torch.cat(batch_indices(10, 4, torch.Generator().manual_seed(0)))
    assert torch.equal(first, again) and sorted(first.tolist()) == list(range(10))
    assert torch.equal(torch.cat(batch_indices(10, 4)), torch.arange(10))


def test_a_trailing_batch_of_one_is_dropped_in_training_only():
    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in batch_indices(9, 4, g)] == [4, 4]
    assert [len(b) for b in batch_indices(9, 4)] == [4, 4, 1]  # evaluation keeps every image


def test_batch_size_1_uses_every_image_and_a_lone_last_image_is_still_dropped():
    g = torch.Generator().manual_seed(0)
    assert len(batch_indices(7, 1, g)) == 7  # before: the last image of each epoch was skipped
    assert [len(b) for b in batch_indices(9, 4, g)] == [4, 4]  # unchanged (committed results rely on it)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_source_gives_float_batches_in_0_1_by_index(channels_last):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    source = BatchSource(images, torch.device("cpu"), channels_last=channels_last)
    assert len(source) == 5
    x = source.batch(torch.tensor([3, 1]))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 8, 8)
    assert torch.equal(x, images[[3, 1]].float() / 255.0)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_batch_source_takes_only_uint8_image_stacks():
    with pytest.raises(AssertionError, match="expected uint8"):
        BatchSource(torch.rand(2, 3, 8, 8), torch.device("cpu"))


def test_autocast_leaves_cpu_in_float32():
    """CPU autocast is slower for these convolutions, so amp is CUDA-only."""
    x = torch.rand(4, 4)
    with autocast(torch.device("cpu"), True):
        assert (x @ x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_autocast_is_bf16_on_cuda_when_amp_is_on():
    x = torch.rand(4, 4, device="cuda")
    with autocast(x.device, True):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(x.device, False):
        assert (x @ x).dtype == torch.float32


def test_nhwc_is_for_models_with_convolutions_on_cuda_and_cpu():
    cae = models.build_model("cae", image_size=32, **TINY_CAE)
    assert has_conv(cae)
    assert prefers_channels_last(cae, torch.device("cpu")) and prefers_channels_last(cae, torch.device("cuda"))
    assert not prefers_channels_last(cae, torch.device("mps"))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))  # no convolution
    assert not has_conv(mlp) and not prefers_channels_last(mlp, torch.device("cpu"))
