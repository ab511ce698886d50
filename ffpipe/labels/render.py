"""A PNG of one image under every label plus the neutral overlay, to check label patterns by eye.

This is the analogue of seed 000's Fig. 2 (set 1) and Fig. 7 (set 2): the same digit superposed with each
of the ten label waves. Wrong frequencies, orientations or an intensity K that hides the digit are obvious
in such a grid and invisible in a unit test. We draw on a bare Agg canvas rather than through pyplot, so
rendering touches no global figure state and works in headless processes and threads. matplotlib is imported
inside the function: every pipeline worker imports ffpipe.labels, and only `labels show` draws.
"""

import math
from pathlib import Path

import torch
from torch import Tensor

from ffpipe.errors import FFPipeError
from ffpipe.labels.base import LabelEncoder

_MAX_COLUMNS = 6
_PANEL_INCHES = 2.0


def _panel(image: Tensor):
    """[C, H, W] in [0, 1] -> what imshow wants: [H, W] for gray, [H, W, 3] for colour."""
    array = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    return array[0].numpy() if array.shape[0] == 1 else array[:3].permute(1, 2, 0).numpy()


def render_label_grid(
    encoder: LabelEncoder, image: Tensor, path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG grid of `image` (float [C, H, W] in [0, 1]) under labels 0..C-1 and the neutral overlay.

    Panels are shown without smoothing (nearest neighbour) so single pixels, e.g. a one-hot code, stay
    visible. Returns the path written. Encoding "none" has no overlay to show and is an error.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not encoder.overlays:
        raise FFPipeError(f"encoding {encoder.description} puts no label into the image: nothing to show")
    if image.dim() != 3 or tuple(image.shape) != encoder.image_shape:
        raise FFPipeError(
            f"image to render must have shape {list(encoder.image_shape)}, got {list(image.shape)}"
        )
    batch = image.to(encoder.device, torch.float32)[None]
    with torch.no_grad():
        variants = torch.cat([encoder.encode_all(batch), encoder.neutral(batch)])
    names = [f"label {k}" for k in range(encoder.num_classes)] + ["neutral"]

    columns = min(_MAX_COLUMNS, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(
        figsize=(columns * _PANEL_INCHES, rows * (_PANEL_INCHES + 0.25) + 0.4), dpi=100, layout="constrained"
    )
    FigureCanvasAgg(figure)
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.set_axis_off()
        if index < len(names):
            axes.imshow(_panel(variants[index]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axes.set_title(names[index], fontsize=9)
    figure.suptitle(title if title is not None else f"labels: {encoder.description}", fontsize=11)

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, format="png")
    except OSError as error:
        raise FFPipeError(f"cannot write label grid to {target}: {error.strerror or error}") from None
    return target
