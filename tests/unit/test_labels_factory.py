"""make_encoder and the encoders turn every bad argument into one FFPipeError line."""

import pytest
import torch

from ffpipe.errors import FFPipeError
from ffpipe.ff.labels import ENCODINGS, fourier_patterns, make_encoder


def test_encodings_are_the_three_documented_ones():
    assert ENCODINGS == ("onehot", "fourier", "none")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("gaussian", 10, (1, 28, 28)), {}, "unknown label encoding 'gaussian'"),
        (("fourier", 10, (1, 28, 28)), {"label_set": 3}, "label set must be 1 or 2"),
        (("fourier", 10, (1, 28, 28)), {"label_set": True}, "label set must be 1 or 2"),
        (("fourier", 10, (1, 28, 28)), {"k": 1.0}, "intensity K must be a number in [0, 1)"),
        (("fourier", 10, (1, 28, 28)), {"k": -0.1}, "intensity K"),
        (("fourier", 10, (1, 28, 28)), {"k": float("nan")}, "intensity K"),
        (("fourier", 10, (1, 28, 28)), {"k": "0.3"}, "intensity K"),
        (("fourier", 11, (1, 28, 28)), {}, "has 10 labels; 11 classes"),
        (("fourier", 100, (3, 32, 32)), {"label_set": 2}, "has 10 labels; 100 classes"),
        (("onehot", 10, (1, 3, 3)), {}, "one-hot labels need 10 pixels"),
        (("onehot", 1, (1, 28, 28)), {}, "at least 2 classes"),
        (("none", 2.5, (1, 28, 28)), {}, "at least 2 classes"),
        (("fourier", 10, (28, 28)), {}, "image shape must be three positive integers"),
        (("fourier", 10, (1, 0, 28)), {}, "image shape must be three positive integers"),
        (("onehot", 10, "1x28x28"), {}, "image shape must be three positive integers"),
        (("onehot", 10, (1, 28, 28)), {"device": "gpu-please"}, "not a torch device"),
    ],
)
def test_bad_arguments_give_one_clear_error(args, kwargs, message):
    with pytest.raises(FFPipeError) as caught:
        make_encoder(*args, **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_fourier_patterns_validates_its_own_arguments():
    with pytest.raises(FFPipeError, match="label set must be 1 or 2"):
        fourier_patterns(0, (1, 28, 28))
    with pytest.raises(FFPipeError, match="11 classes"):
        fourier_patterns(1, (1, 28, 28), num_classes=11)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wrong_batches_are_rejected_clearly(encoding):
    encoder = make_encoder(encoding, 10, (1, 28, 28))
    with pytest.raises(FFPipeError, match=r"expect images of shape \[B, 1, 28, 28\]"):
        encoder.encode(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(FFPipeError, match="expect images"):
        encoder.encode_all(torch.zeros(1, 28, 28))
    with pytest.raises(FFPipeError, match="labels must be an integer tensor of shape"):
        encoder.encode(torch.zeros(2, 1, 28, 28), torch.tensor([0.0, 1.0]))
    with pytest.raises(FFPipeError, match="labels must be an integer tensor of shape"):
        encoder.encode(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1, 2]))


def test_accepts_numpy_and_torch_shapes():
    np = pytest.importorskip("numpy")
    shape = torch.zeros(1, 3, 32, 32).shape[1:]
    assert make_encoder("fourier", 10, shape).image_shape == (3, 32, 32)
    assert make_encoder("onehot", 10, tuple(np.array([1, 28, 28]))).image_shape == (1, 28, 28)
