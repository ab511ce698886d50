"""What one wire message looks like in bytes: an envelope of known size whose header says what it carries.

The receiver must post every receive with the exact byte size of what arrives (gloo and NCCL both match a
receive to the next send from that peer, in order, and by size). So a message is an *envelope*, a uint8
tensor whose size the receiver already knows: its first HEADER_BYTES hold HEADER_LEN int64 fields, and when
the payload fits, the payload tensors' bytes follow, each at an 8-byte-aligned offset. Every header also
announces the size of the *next* envelope: the sender promises room for a payload like the current one. A
stream whose shapes repeat step after step (a pipeline's) therefore costs one transfer per message, as a raw
`send` does. A payload that does not fit the promised envelope follows it as separate tensors, and so does
any payload over INLINE_MAX_BYTES, where copying it into the envelope would cost more than the extra round
trip it saves (measured in `benchmarks/results/wire/`).

Header fields: magic, kind, step, epoch, tensor count, inline flag, next envelope bytes, tag count; then
MAX_TAGS tags (small integers the caller attaches, such as a packet's view and the sources of its shortcut
tensors: they arrive as host integers, so the receiving stage reads its metadata without a device read);
then per tensor its dtype code, ndim and MAX_NDIM dims. 136 slots (1088 bytes) describe 16 tags and 16
tensors of up to 5 dimensions (8 + 16 + 16·7): room for a packet of activations, labels, accumulators and
shortcut tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch

from ffpipe.errors import FFPipeError

HEADER_LEN = 136
MAX_TAGS = 16
MAX_TENSORS = 16
MAX_NDIM = 5
HEADER_BYTES = HEADER_LEN * 8
INLINE_MAX_BYTES = 256 * 1024
MAGIC = 0x66667069  # "ffpi": a header that does not start with it means the two sides lost step
_FIELDS = 8
_ALIGN = 8

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)
_CODE_OF = {dtype: code for code, dtype in enumerate(_DTYPES, start=1)}
TensorSpec = tuple[tuple[int, ...], torch.dtype]


class Kind(IntEnum):
    """What a message means to the schedule. The wire itself only treats STOP and ERROR apart: each is the
    last message of its channel."""

    TRAIN = 1
    EVAL = 2
    EPOCH_END = 3
    STOP = 4
    ERROR = 5


LAST_KINDS = (Kind.STOP, Kind.ERROR)
_KIND_VALUES = frozenset(int(kind) for kind in Kind)


@dataclass
class Message:
    """A received message; its tensors are views of the receiver's reused buffers (see `Receiver`)."""

    kind: Kind
    step: int
    epoch: int
    tensors: list[torch.Tensor]
    tags: tuple[int, ...] = ()


@dataclass
class Header:
    kind: Kind
    step: int
    epoch: int
    specs: list[TensorSpec]
    inline: bool
    next_bytes: int
    tags: tuple[int, ...] = ()


class PeerError(FFPipeError):
    """The other end of a channel died, timed out, was aborted, or sent something unreadable."""

    def __init__(self, message: str, peer: int):
        super().__init__(message)
        self.peer = peer


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _nbytes(spec: TensorSpec) -> int:
    shape, dtype = spec
    n = 1
    for d in shape:
        n *= d
    return n * dtype.itemsize


def specs_of(tensors: Sequence[torch.Tensor]) -> list[TensorSpec]:
    return [(tuple(t.shape), t.dtype) for t in tensors]


def envelope_bytes(specs: Sequence[TensorSpec]) -> int:
    """The size of an envelope that carries tensors of these (shape, dtype) specs inline."""
    return HEADER_BYTES + sum(_aligned(_nbytes(spec)) for spec in specs)


def next_envelope_bytes(specs: Sequence[TensorSpec]) -> int:
    """What to promise for the message after one of these specs: room for the same payload, if it is small
    enough to travel inline, else just a header."""
    need = envelope_bytes(specs)
    return need if need - HEADER_BYTES <= INLINE_MAX_BYTES else HEADER_BYTES


def encode_header(kind: Kind, step: int, epoch: int, tensors: Sequence[torch.Tensor], inline: bool = False,
                  next_bytes: int = HEADER_BYTES, tags: Sequence[int] = ()) -> list[int]:
    """The header's HEADER_LEN integers; FFPipeError for what the fixed layout cannot describe."""
    if len(tensors) > MAX_TENSORS:
        raise FFPipeError(f"a message holds at most {MAX_TENSORS} tensors, got {len(tensors)}")
    if len(tags) > MAX_TAGS:
        raise FFPipeError(f"a message carries at most {MAX_TAGS} tags, got {len(tags)}")
    values = [MAGIC, int(kind), int(step), int(epoch), len(tensors), int(inline), int(next_bytes), len(tags),
              *(int(t) for t in tags), *[0] * (MAX_TAGS - len(tags))]
    for i, tensor in enumerate(tensors):
        if tensor.dtype not in _CODE_OF:
            raise FFPipeError(f"tensor {i} has dtype {tensor.dtype}, which the wire cannot send")
        if tensor.dim() > MAX_NDIM:
            raise FFPipeError(f"tensor {i} has {tensor.dim()} dimensions; the wire sends at most {MAX_NDIM}")
        shape = list(tensor.shape)
        values += [_CODE_OF[tensor.dtype], len(shape)] + shape + [0] * (MAX_NDIM - len(shape))
    return values + [0] * (HEADER_LEN - len(values))


def decode_header(values: list[int], peer: int) -> Header:
    """The header of a received envelope; PeerError if it is not one."""
    count, ntags = values[4], values[7]
    if (values[0] != MAGIC or values[1] not in _KIND_VALUES or not 0 <= count <= MAX_TENSORS
            or values[5] not in (0, 1) or values[6] < HEADER_BYTES or not 0 <= ntags <= MAX_TAGS):
        raise PeerError(f"garbled message header from rank {peer}: the two sides are out of step", peer)
    specs, first = [], _FIELDS + MAX_TAGS
    for i in range(count):
        code, ndim, *dims = values[first + i * (2 + MAX_NDIM):first + (i + 1) * (2 + MAX_NDIM)]
        if not (1 <= code <= len(_DTYPES) and 0 <= ndim <= MAX_NDIM):
            raise PeerError(f"garbled tensor {i} in a message header from rank {peer}", peer)
        specs.append((tuple(dims[:ndim]), _DTYPES[code - 1]))
    return Header(Kind(values[1]), values[2], values[3], specs, bool(values[5]), values[6],
                  tuple(values[_FIELDS:_FIELDS + ntags]))


class Envelope:
    """One reusable envelope buffer with its typed views cached, so that in a steady stream packing or
    unpacking a message is one copy per tensor and no other tensor op: on a 2-core CPU every small torch
    op (a slice, a view) costs microseconds, several of them per tensor would add up to most of a small
    message's cost."""

    def __init__(self, size: int, device: torch.device):
        self.buffer = torch.empty(size, dtype=torch.uint8, device=device)
        fields = self.buffer[:HEADER_BYTES].view(torch.int64)
        self._fields = fields.numpy() if device.type == "cpu" else fields
        self._views: dict[tuple[TensorSpec, ...], list[torch.Tensor]] = {}

    def views(self, specs: Sequence[TensorSpec]) -> list[torch.Tensor]:
        """Typed views of the payload area, one per spec, each at an 8-byte-aligned offset."""
        key = tuple(specs)
        views = self._views.get(key)
        if views is None:
            views, offset = [], HEADER_BYTES
            for shape, dtype in key:
                n = _nbytes((shape, dtype))
                views.append(self.buffer[offset:offset + n].view(dtype).view(shape))
                offset += _aligned(n)
            self._views[key] = views
        return views

    def write(self, header: list[int], tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec]) -> None:
        """The header and, if `tensors` is not empty, their values inline."""
        if isinstance(self._fields, torch.Tensor):  # on a GPU: one small host-to-device copy
            self._fields.copy_(torch.tensor(header, dtype=torch.int64), non_blocking=True)
        else:
            self._fields[:] = header
        if tensors:
            for view, tensor in zip(self.views(specs), tensors):
                view.copy_(tensor)

    def header(self) -> list[int]:
        return self._fields.tolist()
