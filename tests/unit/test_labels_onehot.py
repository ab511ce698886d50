"""Hinton's one-hot overlay: exact pixels, the 1/C neutral, and the channel-group pass-through."""

import pytest
import torch

from ffpipe.ff.labels import make_encoder


def images(shape: tuple[int, int, int], batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))


def test_first_ten_pixels_carry_the_label_and_the_rest_is_untouched():
    x = images((1, 28, 28))
    before = x.clone()
    out = make_encoder("onehot", 10, (1, 28, 28)).encode(x, torch.tensor([7, 0, 9]))
    assert torch.equal(x, before), "the input batch is not modified in place"
    flat = out.reshape(3, -1)
    for row, label in enumerate([7, 0, 9]):
        expected = torch.zeros(10)
        expected[label] = 1.0
        assert torch.equal(flat[row, :10], expected)
    assert torch.equal(flat[:, 10:], x.reshape(3, -1)[:, 10:])


def test_multi_channel_uses_the_first_values_of_the_flattened_chw_tensor():
    # 3 x 2 x 2 = 12 values: the ten-value code runs through channel 0, channel 1 and half of channel 2.
    x = images((3, 2, 2), batch=2)
    out = make_encoder("onehot", 10, (3, 2, 2)).encode(x, torch.tensor([5, 9]))
    assert out[0, 1, 0, 1] == 1.0 and out[1, 2, 0, 1] == 1.0
    assert out.reshape(2, -1)[:, :10].sum(dim=1).tolist() == [1.0, 1.0]
    assert torch.equal(out[:, 2, 1], x[:, 2, 1]), "values after the code keep the image"


@pytest.mark.parametrize("num_classes", [2, 10, 17])
def test_neutral_sets_each_code_pixel_to_one_over_c(num_classes):
    x = images((3, 32, 32))
    out = make_encoder("onehot", num_classes, (3, 32, 32)).neutral(x)
    flat = out.reshape(3, -1)
    assert torch.allclose(flat[:, :num_classes], torch.full((3, num_classes), 1.0 / num_classes))
    assert torch.equal(flat[:, num_classes:], x.reshape(3, -1)[:, num_classes:])


def test_onehot_keeps_dtype():
    out = make_encoder("onehot", 10, (1, 28, 28)).encode(images((1, 28, 28)).half(), torch.tensor([1, 2, 3]))
    assert out.dtype == torch.float16


def test_channel_group_mode_leaves_images_alone():
    x = images((3, 32, 32))
    encoder = make_encoder("none", 10, (3, 32, 32))
    assert encoder.overlays is False and encoder.num_classes == 10
    assert encoder.encode(x, torch.tensor([1, 2, 3])) is x
    assert encoder.neutral(x) is x
    assert torch.equal(encoder.encode_all(x), x.repeat(10, 1, 1, 1))


def test_overlay_encoders_say_so():
    assert make_encoder("onehot", 10, (1, 28, 28)).overlays is True
    assert make_encoder("fourier", 10, (1, 28, 28)).overlays is True
