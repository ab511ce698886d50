"""Wrong labels for FF's negative data (Hinton 2022; seed 000 §2.1 and Fig. 1 bottom row).

Negative data is a real image with a wrong label. A "negative" that carries the true label is a positive
example trained to have low goodness, which directly fights the positive pass. The popular
mpezeshki/pytorch_forward_forward code drew negatives as `y[randperm(B)]`, which keeps the true label for
about 1/C of the batch (issue #8, fixed in PR #12 with `(y + randint(1, C)) % C`). We use that fix: an offset
uniform in 1..C-1 added modulo C is uniform over the C-1 wrong labels and can never be 0.

Hard negatives (Hinton 2022: draw the wrong label in proportion to the probability the network currently
gives it) are provided as an interface; seed 000 uses random negatives only.

Both samplers draw on the generator's device (CPU if none is given and the labels are on the CPU) and return
labels on the device of `y`, so a CPU generator gives the same negatives whether training runs on CPU or GPU.
"""

from numbers import Integral

import torch
from torch import Tensor

from ffpipe.errors import FFPipeError


def _check_labels(y: Tensor) -> None:
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise FFPipeError(f"labels must be an integer tensor, got {y.dtype}")


def _draw_device(y: Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else y.device


def sample_negatives(y: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A wrong label for every entry of `y`, uniform over the num_classes - 1 others; never equal to `y`.

    `y` holds labels in [0, num_classes) (not checked here, to avoid a device sync per batch).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise FFPipeError(f"negative labels need at least 2 classes, got {num_classes!r}")
    _check_labels(y)
    offset = torch.randint(
        1, num_classes, y.shape, generator=generator, device=_draw_device(y, generator), dtype=y.dtype
    )
    return (y + offset.to(y.device)) % num_classes


def sample_distinct_negatives(y: Tensor, num_classes: int, count: int,
                              generator: torch.Generator | None = None) -> list[Tensor]:
    """`count` wrong labels for every entry of `y`, distinct from each other and from `y`: each image gets a
    uniform draw without replacement from its num_classes - 1 wrong labels. `count` = 1 is `sample_negatives`
    (the same draw, so one-negative runs keep their random stream)."""
    if isinstance(count, bool) or not isinstance(count, Integral) or not 1 <= count < num_classes:
        raise FFPipeError(f"data.labels.negatives_per_image must be in 1..{num_classes - 1} for {num_classes} "
                          f"classes, got {count!r}")
    if count == 1:
        return [sample_negatives(y, num_classes, generator)]
    _check_labels(y)
    keys = torch.rand((y.shape[0], num_classes - 1), generator=generator, device=_draw_device(y, generator))
    offsets = keys.argsort(dim=1)[:, :count].to(device=y.device, dtype=y.dtype) + 1
    return [(y + offsets[:, i]) % num_classes for i in range(count)]


def sample_hard_negatives(y: Tensor, scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A wrong label per row, drawn with probability proportional to the model's scores for the wrong labels.

    `scores` is a non-negative [B, C] matrix (e.g. a softmax over per-label goodness). The true label gets
    probability 0 whatever its score; a row whose wrong-label scores are all zero falls back to uniform over
    the wrong labels, so every row always yields a valid negative. Validating the scores costs one device
    sync, acceptable for a sampler that runs once per batch next to a full goodness pass.
    """
    _check_labels(y)
    if scores.dim() != 2 or y.dim() != 1 or scores.shape[0] != y.shape[0] or scores.shape[1] < 2:
        raise FFPipeError(
            f"hard negatives need labels [B] and scores [B, C] with C >= 2, got {list(y.shape)} and "
            f"{list(scores.shape)}"
        )
    weights = scores.to(torch.float64)
    if not bool(torch.all(torch.isfinite(weights) & (weights >= 0))):
        raise FFPipeError("hard-negative scores must be finite and non-negative")
    true_column = y.to(scores.device)[:, None]
    weights = weights.scatter(1, true_column, 0.0)
    uniform = torch.ones_like(weights).scatter(1, true_column, 0.0)
    weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, uniform)
    drawn = torch.multinomial(weights.to(_draw_device(y, generator)), 1, generator=generator)
    return drawn.squeeze(1).to(device=y.device, dtype=y.dtype)
