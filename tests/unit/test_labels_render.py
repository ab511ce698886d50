"""render_label_grid writes a real PNG with every label variant of one image and the neutral overlay."""

import pytest
import torch
from matplotlib.image import imread

from ffpipe.errors import FFPipeError
from ffpipe.ff.labels import make_encoder
from ffpipe.run.plots import render_label_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def digit() -> torch.Tensor:
    image = torch.zeros(1, 28, 28)
    image[0, 6:9, 6:21] = 1.0
    image[0, 9:23, 14:17] = 0.8
    return image


def test_fourier_grid_is_a_valid_png(tmp_path):
    encoder = make_encoder("fourier", 10, (1, 28, 28), label_set=1, k=0.35)
    path = render_label_grid(encoder, digit(), tmp_path / "nested" / "set1.png", title="set 1")
    assert path == tmp_path / "nested" / "set1.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 900
    assert pixels[..., :3].std() > 0.1, "the grid shows images, not a blank canvas"


@pytest.mark.parametrize("encoding", ["onehot", "fourier"])
def test_colour_images_render(tmp_path, encoding):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    encoder = make_encoder(encoding, 10, (3, 32, 32), label_set=2)
    path = render_label_grid(encoder, image, str(tmp_path / f"{encoding}.png"))
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_rendering_errors_are_clear(tmp_path):
    with pytest.raises(FFPipeError, match="nothing to show"):
        render_label_grid(make_encoder("none", 10, (1, 28, 28)), digit(), tmp_path / "none.png")
    with pytest.raises(FFPipeError, match="must have shape"):
        render_label_grid(make_encoder("fourier", 10, (3, 32, 32)), digit(), tmp_path / "bad.png")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FFPipeError, match="cannot write label grid"):
        render_label_grid(make_encoder("fourier", 10, (1, 28, 28)), digit(), blocker / "grid.png")
