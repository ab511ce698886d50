"""FF building blocks: layers (`blocks`), the normalization between them (`norm`), their local goodness
objectives (`objective`, with peer normalization in `peer`) and the full-gradient ReLU (`activation`)."""

from ffpipe.nn.activation import relu_fullgrad
from ffpipe.nn.blocks import BlockSpec, FFBlock, block_seed, block_specs, build_block, build_blocks
from ffpipe.nn.norm import group_rms_norm, make_norm, rms_norm
from ffpipe.nn.objective import FAMILIES, Objective, make_objective, split_streams
from ffpipe.nn.peer import PeerNormalization

__all__ = [
    "FAMILIES", "BlockSpec", "FFBlock", "Objective", "PeerNormalization", "block_seed", "block_specs",
    "build_block", "build_blocks", "group_rms_norm", "make_norm", "make_objective", "relu_fullgrad",
    "rms_norm", "split_streams",
]
