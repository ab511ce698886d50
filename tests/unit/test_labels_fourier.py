"""Fourier labels (seed 000 §2.1): the waves of sets 1 and 2, the intensity rule K, and the encoder."""

import math

import pytest
import torch

from ffpipe.ff.labels import fourier_patterns, make_encoder
from ffpipe.ff.labels.fourier import renormalize

# Set 1 as documented in ffpipe/labels/waves.py: (kx, ky) in cycles per image, ky pointing up on screen.
SET1_TABLE = [(2, 0), (2, 2), (0, 2), (-2, 2), (4, 0), (4, 4), (0, 4), (-4, 4), (6, 0), (0, 6)]


def digit(height: int = 28, width: int = 28) -> torch.Tensor:
    """A synthetic '7' on a black background, [1, 1, H, W] in [0, 1] (no dataset files in unit tests)."""
    image = torch.zeros(1, 1, height, width)
    image[0, 0, 6:9, 6:21] = 1.0
    for row in range(9, 23):
        col = 20 - (row - 9) // 2
        image[0, 0, row, col - 1 : col + 2] = 0.8
    return image


def texture(shape: tuple[int, int, int], batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))


def centered_correlation(patterns: torch.Tensor) -> torch.Tensor:
    flat = patterns.flatten(1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    return flat @ flat.T


def share_of_label(out: torch.Tensor, image: torch.Tensor, pattern: torch.Tensor) -> tuple[float, float]:
    """Fit out = alpha*image + beta*pattern + gamma (min-max renormalization is affine).

    Returns the label's share of the total intensity before renormalization, beta*sum(p) / (alpha*sum(x) +
    beta*sum(p)), which is K by definition, and the worst residual of the fit.
    """
    columns = [image.flatten(), pattern.flatten(), torch.ones(image.numel())]
    design = torch.stack(columns, dim=1).double()
    alpha, beta, gamma = torch.linalg.lstsq(design, out.flatten().double()[:, None]).solution[:, 0]
    residual = (design @ torch.stack([alpha, beta, gamma]) - out.flatten().double()).abs().max().item()
    label = beta * pattern.double().sum()
    return (label / (alpha * image.double().sum() + label)).item(), residual


@pytest.mark.parametrize("label_set", [1, 2])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2, 20, 36)])
def test_patterns_shape_range_and_distinct(label_set, shape):
    patterns = fourier_patterns(label_set, shape)
    assert patterns.shape == (10, *shape) and patterns.dtype == torch.float32
    assert patterns.min() >= 0.0 and patterns.max() <= 1.0
    assert patterns.max() > 0.99 and patterns.min() < 0.01
    assert torch.equal(patterns, patterns[:, :1].expand_as(patterns)), "the same gray wave in every channel"
    off_diagonal = centered_correlation(patterns) - torch.eye(10, dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.1, "ten clearly different patterns"


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32), (1, 20, 36)])
def test_set1_labels_are_the_documented_single_fourier_modes(shape):
    _, height, width = shape
    patterns = fourier_patterns(1, shape)[:, 0].double()
    for label, (kx, ky) in enumerate(SET1_TABLE):
        spectrum = torch.fft.fft2(patterns[label] - patterns[label].mean()).abs() ** 2
        # A real wave cos(2pi(kx c/W - ky r/H)) sits at (row freq, col freq) = (-ky, kx) and its mirror.
        expected = {((-ky) % height, kx % width), (ky % height, (-kx) % width)}
        top = torch.topk(spectrum.flatten(), 2).indices
        assert {(int(i) // width, int(i) % width) for i in top} == expected, f"label {label}"
        assert spectrum.flatten()[top].sum() > 0.999 * spectrum.sum(), f"label {label} is not a single mode"


def test_set1_orthogonal_after_removing_mean():
    off_diagonal = centered_correlation(fourier_patterns(1, (1, 28, 28))) - torch.eye(10, dtype=torch.float64)
    assert off_diagonal.abs().max() < 1e-6


@pytest.mark.parametrize("size", [28, 32])
def test_set2_has_ten_equidistant_orientations_at_one_frequency(size):
    pad = 8
    patterns = fourier_patterns(2, (1, size, size))[:, 0].double()
    angles, radii = [], []
    for pattern in patterns:
        spectrum = torch.fft.fft2(pattern - pattern.mean(), s=(pad * size, pad * size)).abs()
        index = int(spectrum.flatten().argmax())
        freqs = torch.fft.fftfreq(pad * size, d=1.0 / size)  # cycles per image side
        fy, fx = freqs[index // (pad * size)].item(), freqs[index % (pad * size)].item()
        angles.append(math.degrees(math.atan2(-fy, fx)) % 180.0)  # rows grow downwards
        radii.append(math.hypot(fx, fy))
    for label, angle in enumerate(angles):
        error = (angle - 18.0 * label + 90.0) % 180.0 - 90.0
        assert abs(error) < 1.5, f"label {label}: measured {angle:.1f} deg, expected {18 * label} deg"
    assert max(radii) - min(radii) < 0.5 and 5.5 < sum(radii) / len(radii) < 6.5


def test_fewer_classes_take_the_first_labels_of_the_set():
    assert torch.equal(fourier_patterns(1, (1, 28, 28), num_classes=4), fourier_patterns(1, (1, 28, 28))[:4])


def test_k_zero_leaves_image_unchanged_up_to_renormalization():
    x = texture((3, 32, 32)) * 0.5 + 0.2
    encoder = make_encoder("fourier", 10, (3, 32, 32), k=0.0)
    for label in range(10):
        out = encoder.encode(x, torch.full((4,), label))
        torch.testing.assert_close(out, renormalize(x))
    torch.testing.assert_close(
        make_encoder("fourier", 10, (1, 28, 28), k=0.0).encode(digit(), torch.tensor([3])), digit()
    )


@pytest.mark.parametrize("label_set", [1, 2])
@pytest.mark.parametrize("k", [0.1, 0.35, 0.65])
def test_k_is_the_label_share_of_total_intensity(label_set, k):
    x = digit()
    encoder = make_encoder("fourier", 10, (1, 28, 28), label_set=label_set, k=k)
    for label in (0, 5, 9):
        out = encoder.encode(x, torch.tensor([label]))
        assert out.min() == 0.0 and out.max() == 1.0
        share, residual = share_of_label(out, x, encoder.patterns[label])
        assert residual < 1e-5, "the output is the image plus a multiple of the pattern, rescaled"
        assert share == pytest.approx(k, abs=1e-4)
    share, residual = share_of_label(encoder.neutral(x), x, encoder.patterns.mean(dim=0))
    assert residual < 1e-5 and share == pytest.approx(k, abs=1e-4), (
        "neutral: mean pattern under the same rule"
    )


def test_larger_k_moves_the_overlay_towards_the_pattern_and_apart_across_labels():
    x, label = digit(), torch.tensor([4])
    distances, label_gaps = [], []
    for k in (0.0, 0.1, 0.35, 0.65, 0.9, 0.99):
        encoder = make_encoder("fourier", 10, (1, 28, 28), k=k)
        out = encoder.encode(x, label)
        distances.append((out - encoder.patterns[4]).pow(2).mean().item())
        label_gaps.append((out - encoder.encode(x, torch.tensor([7]))).pow(2).mean().item())
    assert all(a > b for a, b in zip(distances, distances[1:], strict=False)), distances
    assert all(a < b for a, b in zip(label_gaps, label_gaps[1:], strict=False)), label_gaps
    assert label_gaps[0] == 0.0 and distances[-1] < 0.01


def test_black_image_gets_the_pure_pattern():
    encoder = make_encoder("fourier", 10, (1, 28, 28), k=0.35)
    out = encoder.encode(torch.zeros(2, 1, 28, 28), torch.tensor([2, 8]))
    torch.testing.assert_close(out, encoder.patterns[[2, 8]])
    assert (
        make_encoder("fourier", 10, (1, 28, 28), k=0.0)
        .encode(torch.zeros(1, 1, 28, 28), torch.tensor([1]))
        .eq(0)
        .all()
    )


def test_neutral_differs_from_every_label_and_keeps_range():
    x = texture((3, 32, 32))
    encoder = make_encoder("fourier", 10, (3, 32, 32), label_set=2)
    neutral = encoder.neutral(x)
    assert neutral.shape == x.shape and neutral.min() >= 0.0 and neutral.max() <= 1.0
    for label in range(10):
        assert (encoder.encode(x, torch.full((4,), label)) - neutral).abs().max() > 0.05


@pytest.mark.parametrize("encoding", ["fourier", "onehot", "none"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_encode_all_equals_a_loop_of_encode(encoding, shape):
    x = texture(shape, batch=5)
    encoder = make_encoder(encoding, 10, shape, label_set=2, k=0.5)
    everything = encoder.encode_all(x)
    assert everything.shape == (50, *shape)
    for label in range(10):
        torch.testing.assert_close(
            everything[label * 5 : (label + 1) * 5], encoder.encode(x, torch.full((5,), label))
        )


def test_encoder_keeps_dtype_and_does_not_touch_its_input():
    x = texture((3, 32, 32)).double()
    before = x.clone()
    encoder = make_encoder("fourier", 10, (3, 32, 32))
    out = encoder.encode(x, torch.arange(4))
    assert out.dtype == torch.float64 and torch.equal(x, before)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert encoder.patterns.shape == (10, 3, 32, 32) and encoder.patterns.device == torch.device("cpu")


def test_blend_reading_mixes_image_and_pattern_with_weight_k():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    enc = make_encoder("fourier", 10, (1, 8, 8), k=0.4, k_reading="blend")
    y = torch.tensor([0, 3, 9])
    want = renormalize(0.6 * x + 0.4 * fourier_patterns(1, (1, 8, 8), 10)[y])
    assert torch.allclose(enc.encode(x, y), want, atol=1e-6)
    assert torch.allclose(enc.encode_all(x)[3 * 3:4 * 3], enc.encode(x, torch.full((3,), 3)), atol=1e-6)
    with pytest.raises(Exception, match="K reading 'mix' is not one of share, blend"):
        make_encoder("fourier", 10, (1, 8, 8), k=0.4, k_reading="mix")
