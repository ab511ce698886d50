"""The backprop twin of an FF config: the same blocks, trained end to end through one softmax classifier.

To compare FF against backprop (BP) on equal terms, the BP network has the FF network's architecture: its
blocks are built by `ffpipe.nn.block_specs` / `build_block` from the same `model` section with the same seed,
so layer types, widths, kernels, pooling, BatchNorm, activation and initial weights are identical. Between
blocks sits the same normalization, `model.norm` (the RMS norm of seed 000 eq. 2 by default, its per-group
variant for group_ce configs): it is part of the FF architecture, so BP keeps it, but nothing is detached,
and the gradient of the one loss flows through every norm into every block. The network input is the plain
image (no label overlay: BP reads the label only in its loss), normalized like the FF input
(`model.input_norm`). Shortcuts (`model.shortcuts`) join exactly as in FF, but are not detached: a BP ResNet.

Seed 000 §3.2 compares its FF-CNN with a BP-trained CNN of the same size but does not describe that net's
norms or head, so the rest is our choice. Keeping the between-block norm makes the two networks compute the
same function class; on top sits one linear softmax classifier trained with cross-entropy, the standard BP
readout. It reads the *normalized* activity of the last block, the features an FF head slice reads (seed 000
§2.3), so the two readouts differ only in how the blocks below them were trained. Its initial weights
depend only on (seed, depth), like a head slice's.

For a channel-group config (`group_ce`, DeeperForward's nets) the classifier is of the FF readout's kind
instead: the logits are the last block's class-group mean activations (what its group readout sums), so the
BP twin has no parameter the FF net lacks, and it trains with the same cross-entropy over the groups, only
through every block at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ffpipe.config import Config
from ffpipe.errors import FFPipeError
from ffpipe.ff.blocks import BlockSpec, block_specs, build_block
from ffpipe.ff.head import make_slice
from ffpipe.ff.norm import between_blocks, network_input
from ffpipe.ff.shortcuts import ShortcutPlan, join


class BPNet(nn.Module):
    """FF blocks with `model.norm` between them and the config's shortcuts, nothing detached, then a linear
    classifier (or, with `group_classifier`, the last block's class-group means): image -> logits."""

    def __init__(self, specs: list[BlockSpec], num_classes: int, model_cfg, seed: int,
                 group_classifier: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.blocks = nn.ModuleList(build_block(spec, seed) for spec in specs)
        self.input_norm = network_input(model_cfg)
        self.norm = between_blocks(model_cfg, num_classes)
        self.shortcuts = ShortcutPlan.of(specs)
        self.classifier = None if group_classifier else make_slice(specs[-1].units, num_classes, len(specs), seed)

    def set_step(self, step: int) -> None:
        """Seed the blocks' dropout masks for this optimizer step, as an FF stage does (`FFBlock`). Under DDP
        every rank draws the same mask pattern for its own shard, and with `train.micro_batches` every
        micro-batch for its rows (our simplification: a mask depends on (seed, step) and its size only)."""
        for block in self.blocks:
            block.step = step

    def forward(self, images: Tensor) -> Tensor:
        """`images`: plain float images [B, C, H, W] in [0, 1]; returns logits [B, classes]."""
        x, saved = self.input_norm(images), {}
        for index, block in enumerate(self.blocks):
            y = block(x)
            if self.classifier is None and index == len(self.blocks) - 1:
                return y.reshape(y.shape[0], self.num_classes, -1).mean(dim=2)
            x = self.norm(y)
            shortcut = self.shortcuts.incoming(index)
            if shortcut is not None:
                x = join(x, saved[shortcut.src], shortcut.kind)
            if self.shortcuts.is_source(index):
                saved[index] = x
        return self.classifier(x.flatten(1))


def build_bp_model(cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> BPNet:
    """The BP twin of `cfg`'s FF network, on the CPU; shape errors are the same FFPipeError lines as FF's."""
    specs = block_specs(cfg.model, image_shape)
    return BPNet(specs, num_classes, cfg.model, cfg.train.seed, group_classifier=cfg.loss.family == "group_ce")


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of one full set of gradients: what data parallelism must average every step."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def micro_batch_rows(rows: int, micro_batches: int) -> int:
    """Rows per micro-batch of a rank's `rows`; one FFPipeError line when `micro_batches` does not divide them
    (unequal micro-batches would weigh their rows unequally in the mean, and it keeps the rule simple)."""
    if rows % micro_batches:
        raise FFPipeError(f"train.micro_batches {micro_batches} does not divide the {rows} rows each rank takes "
                          "per step (data.batch_size over the ranks); pick a divisor of it")
    return rows // micro_batches


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               autocast: Callable[[], contextlib.AbstractContextManager], micro_batches: int = 1,
               no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               ) -> tuple[Tensor, Tensor]:
    """One optimizer step on the mean cross-entropy of this batch (or this rank's shard of it).

    Under DDP the backward averages the gradients over the ranks, so with equal shards the step is the one
    a single process takes on the whole global batch. Returns the loss and the correct count as tensors,
    without a host sync.

    Gradient accumulation (`train.micro_batches` m, our option): the batch is cut into m equal contiguous
    micro-batches, each run forward and backward on its own, so only one micro-batch's activations and
    autograd graph are alive at a time. Micro-batch i's loss is its mean cross-entropy × b_i / B, so the
    summed gradients are those of the mean over all B rows: the step equals the one-batch step up to the
    order of float summation (per-micro-batch partial sums, then their sum), not bitwise. m = 1 is the plain
    step exactly (× 1.0). Under DDP `no_sync` (the DDP module's) skips the all-reduce on all but the last
    micro-batch, whose backward all-reduces the accumulated gradients once. Not the one-batch step:
    BatchNorm normalizes each micro-batch with its own statistics (and updates its running ones m times),
    and dropout draws each micro-batch's mask as that of a batch of its size at this step (`BPNet.set_step`),
    so the micro-batches share one pattern instead of covering the rows of the full batch's mask.
    """
    optimizer.zero_grad(set_to_none=True)
    total = len(labels)
    size = micro_batch_rows(total, micro_batches)
    loss_sum = correct = None
    for i in range(micro_batches):
        rows = slice(i * size, (i + 1) * size)
        with no_sync() if i < micro_batches - 1 else contextlib.nullcontext():
            with autocast():
                logits = model(images[rows])
            loss = F.cross_entropy(logits.float(), labels[rows]) * (size / total)
            loss.backward()
        right = (logits.detach().argmax(dim=1) == labels[rows]).sum()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        correct = right if correct is None else correct + right
    optimizer.step()
    return loss_sum, correct
