"""The sections of an experiment config: one dataclass each, a typed field and a docstring per setting.

A field whose value is one of a few words is a `Literal`, so the words are declared once, here: validation
(`ffpipe.config`) checks them and the modules that act on them take their tuples from these aliases. Ranges
are `Annotated` with a `Range`. Every default is the value a run gets when its YAML says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal


@dataclass(frozen=True)
class Range:
    """Bounds of a number (and of every entry of a list of numbers): gt/ge below, lt/le above."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None


Positive = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
NonNegative = Annotated[float, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
Fraction = Annotated[float, Range(ge=0, lt=1)]

Encoding = Literal["onehot", "fourier", "none"]
KReading = Literal["share", "blend"]
ValSplit = Literal["random", "last"]
ModelType = Literal["linear", "conv"]
Padding = Literal["same", "valid"]
Activation = Literal["relu", "relu_fullgrad"]
Init = Literal["default", "loewe", "kaiming"]
Norm = Literal["rms", "group", "group_rms"]
InputNorm = Literal["rms", "layer"]
ShortcutKind = Literal["add", "concat"]
PreactNorm = Literal["none", "layer"]
Family = Literal["bce", "symba", "hinge", "group_ce"]
Goodness = Literal["sum", "mean"]
GroupGoodness = Literal["mean_sq", "mean"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cooldown", "multistep", "cosine"]
HeadMode = Literal["joint", "local", "none"]
Readout = Literal["linear", "goodness", "group"]
ChunkMode = Literal["local", "backprop"]
Device = Literal["cpu", "cuda", "auto"]
Precision = Literal["fp32", "bf16"]
PartitionRule = Literal["cost", "flops", "measured", "equal"]
WireDtype = Literal["float32", "bfloat16"]


@dataclass
class LabelConfig:
    """How the label enters the input (seed 000 §2.1; Hinton's one-hot; `none` for channel-group losses)."""

    encoding: Encoding = "fourier"
    """onehot: the first C pixels (MLPs); fourier: a full-image wave per label (CNNs); none: the plain image."""
    label_set: Annotated[int, Range(ge=1, le=2)] = 1
    """Fourier label set: 1 = 4 orientations × 3 frequencies (seed 000 Fig. 2), 2 = 10 orientations (Fig. 7)."""
    k: Fraction = 0.35
    """Label intensity K in [0, 1): seed 000's best is 0.35 (§3.1); how K mixes label and image: `k_reading`."""
    k_reading: KReading = "share"
    """share: K is the label's share of the image's total intensity (ours); blend: (1 − K)·image + K·label."""
    negatives_per_image: Positive = 1
    """Distinct wrong labels per image, one negative stream each, drawn uniformly among the C − 1 wrong ones
    (never the true label); 1 is the papers' setting, more is our option."""


@dataclass
class AugmentConfig:
    """Training-image augmentation (our option; none of the papers here augments MNIST or Fashion-MNIST). It
    draws from a generator seeded by (train.seed, epoch, batch), so a resumed or pipelined run sees the same
    images, and the BP baseline sees what FF sees. Validation and test images are never augmented."""

    shift: NonNegativeInt = 0
    """Translate each image by up to this many pixels in each direction (zero fill), uniformly per image."""
    flip: bool = False
    """Mirror each image left-right with probability 1/2 (Fashion-MNIST, CIFAR-10; not for digits)."""


@dataclass
class DataConfig:
    """Which dataset, how it is split, and how it is batched."""

    name: str = "fashion_mnist_small"
    """fashion_mnist_small (embedded), mnist, fashion_mnist or cifar10 (`ffpipe data info NAME`)."""
    dir: str | None = None
    """Where the dataset's files are; None searches the lookup order (README, Data)."""
    split_seed: NonNegativeInt = 0
    """Seed of the random validation split (and of `train_subset`)."""
    val_split: ValSplit = "random"
    """random: a seeded draw from the training file; last: its last images, as loeweX holds out MNIST."""
    batch_size: Positive = 100
    """Training images per optimizer step (the global batch when a stage has replicas)."""
    eval_batch_size: Positive = 500
    """Images per evaluation batch."""
    train_subset: Positive | None = None
    """Train on a seeded subset of this many training images (val and test are never cut)."""
    resize: Positive | None = None
    """Resize every image to this square size, bilinearly, once at load (DeeperForward feeds MNIST at 32x32,
    so three stride-2 downsamplings stay even)."""
    labels: LabelConfig = field(default_factory=LabelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """A stack of FF blocks. `width`, `kernel` and `pool` take one value for every block or one per block."""

    type: ModelType = "conv"
    """Block kind: linear (flattens its input) or conv."""
    depth: Positive = 3
    """Number of FF blocks."""
    width: Positive | list[Positive] = 16
    """Units (linear) or channels (conv) per block."""
    kernel: Positive | list[Positive] = 5
    """Conv kernel size per block."""
    stride: Positive | list[Positive] = 1
    """Conv stride per block (2 halves the resolution, as DeeperForward's nets downsample)."""
    padding: Padding = "same"
    """same: pad kernel // 2 (odd kernels); valid: no padding."""
    pool: NonNegativeInt | list[NonNegativeInt] = 0
    """Max-pool size after each block's activation (0: none)."""
    in_pool: NonNegativeInt | list[NonNegativeInt] = 0
    """Average-pool size of each block's input, before its conv (0: none; DeeperForward's TinyCNN)."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """Dropout after each block's activation, in training (DeeperForward's CWConv)."""
    bias: bool = True
    """Whether the linear/conv layers have a bias (DeeperForward's have none)."""
    shortcuts: list[tuple[NonNegativeInt, NonNegativeInt, ShortcutKind]] = field(default_factory=list)
    """[from, to, add|concat]: join block `from`'s output to block `to`'s, detached (`ffpipe.ff.shortcuts`)."""
    batchnorm: bool = False
    """BatchNorm on each block's input (seed 001 §III's order)."""
    activation: Activation = "relu"
    """relu, or loeweX's full-gradient ReLU (identity backward, so dead units recover under peer norm)."""
    init: Init = "default"
    """PyTorch's init, loeweX's normal(0, 1/sqrt(fan_out)) with zero bias, or kaiming (normal, fan_out)."""
    input_norm: InputNorm = "rms"
    """The network input: rms (seed 000 eq. 2) or layer (per-sample LayerNorm over C, H, W: DeeperForward)."""
    norm: Norm = "rms"
    """Between blocks: rms (seed 000 eq. 2, over all units); group (GroupNorm with one group per class, no
    affine: DeeperForward, group_ce only); group_rms (RMS within each class group: our variant)."""
    preact_norm: PreactNorm = "none"
    """none: conv → ReLU, RMS norm after it (seed 000 arXiv); layer: conv → LN → ReLU (its Sci. Rep. 2025 Fig. 2)."""
    eps: Annotated[float, Range(gt=0)] = 1e-8
    """Inside the square root of the norms, so an all-zero activity stays finite."""

    def per_block(self, name: str) -> list[int]:
        value = getattr(self, name)
        return list(value) if isinstance(value, list) else [value] * self.depth


@dataclass
class LossConfig:
    """The local goodness objective of every block; see `ffpipe.ff.objectives` for the equations."""

    family: Family = "bce"
    """bce (seed 000 eq. 1), symba (pair contrast), hinge (seed 004 eq. 1), group_ce (seed 001 eqs. 2-3)."""
    goodness: Goodness = "sum"
    """Per-sample goodness: sum or mean of the squared activity over a block's units."""
    threshold: float | None = None
    """θ of bce and hinge; None: the number of units for sum goodness, 1 for mean goodness."""
    alpha: NonNegative = 4.0
    """SymBa's scale α: the loss is softplus(−α (g_pos − g_neg))."""
    margin: NonNegative = 0.0
    """The hinge's margin δ."""
    group_goodness: GroupGoodness = "mean_sq"
    """group_ce's class score: mean square (seed 001 eq. 2) or mean activation (DeeperForward)."""
    peer_weight: NonNegative = 0.0
    """Weight of peer normalization (Hinton 2022; loeweX 0.03); 0 turns it off."""
    peer_momentum: Fraction = 0.9
    """Momentum of peer normalization's running mean (loeweX 0.9)."""
    significance: bool = False
    """FGFF: learned per-neuron weights inside the goodness (seed 004 eq. 3)."""
    significance_lr: NonNegative = 1e-3
    """Learning rate of the FGFF weights (0 keeps them at 1: plain FF, bitwise)."""
    significance_at_inference: bool = True
    """Whether the FGFF weights also weigh the goodness at inference (seed 004 §III-C)."""
    exclude_first: bool = False
    """Train block 0 without a loss: fixed random features (seed 000 Appendix B)."""


@dataclass
class OptimConfig:
    """The optimizer of every FF block (each block has its own instance) and its per-epoch schedule."""

    name: Optimizer = "adam"
    """One optimizer of this kind per block."""
    lr: NonNegative = 1e-3
    """Base learning rate of the blocks."""
    momentum: NonNegative = 0.9
    """SGD momentum."""
    weight_decay: NonNegative = 0.0
    """L2 for adam and sgd, decoupled for adamw."""
    schedule: Schedule = "constant"
    """Per-epoch rate: constant, cooldown (seed 000 eq. 3, loeweX), multistep, cosine."""
    lr_min: NonNegative = 0.0
    """cosine: the rate it anneals to (DeeperForward: a tenth of lr)."""
    milestones: list[Positive] = field(default_factory=list)
    """multistep: the epochs after which the rate is multiplied by gamma."""
    gamma: NonNegative = 0.1
    """multistep's factor."""


@dataclass
class HeadConfig:
    """The linear readout (seed 000 §2.3): `joint` is the papers' classifier, `local` needs no backward message."""

    mode: HeadMode = "joint"
    """joint: one classifier over all slices; local: each slice learns from the running sum; none: no head."""
    optimizer: Optimizer = "adam"
    """The head slices' optimizer."""
    lr: NonNegative = 1e-3
    """The head slices' learning rate."""
    momentum: NonNegative = 0.9
    """The head's SGD momentum."""
    weight_decay: NonNegative = 0.0
    """The head's weight decay."""
    exclude_first: bool = True
    """Leave block 0 out of the head and the summed readouts (seed 000 §2.3)."""
    ema_decay: Fraction = 0.0
    """> 0: the linear readout reads a debiased moving average of the slices' weights (our choice)."""
    readouts: list[Readout] = field(default_factory=lambda: ["linear", "goodness"])
    """What evaluation reports: linear (the head), goodness (seed 000 eq. 4), group (group_ce)."""


@dataclass
class TrainConfig:
    """How long to train, on what, and what to show."""

    epochs: Positive = 10
    """Epochs to train."""
    seed: NonNegativeInt = 0
    """Seed of the weights, the data order and the negatives."""
    eval_every: Positive = 1
    """Evaluate on the validation split every this many epochs (and after the last step)."""
    max_steps: Positive | None = None
    """Stop after this many steps (a checkpoint is written there)."""
    chunk_mode: ChunkMode = "local"
    """local: every block its own loss (greedy FF); backprop: one loss per stage, gradients inside it."""
    device: Device = "cpu"
    """cpu, cuda, or auto (cuda when every process gets a GPU)."""
    precision: Precision = "fp32"
    """fp32, or bf16 autocast (goodness stays float32)."""
    compile: bool = False
    """torch.compile each block."""
    progress: bool = True
    """The live progress bar or per-stage table (only on a terminal)."""
    micro_batches: Positive = 1
    """BP baseline only (FF runs ignore it): gradient accumulation, ours. Each rank's batch is split into this
    many equal micro-batches whose gradients sum to the step's (mean cross-entropy over the whole batch), so
    peak activation memory shrinks by about this factor; under DDP only the last one all-reduces (`no_sync`).
    Must divide the rows each rank takes per step. Dropout masks and BatchNorm statistics then differ from the
    one-batch step (`ffpipe.baselines.model.train_step`)."""
    tensor_memory: bool = False
    """Record `peak_tensor_bytes`: the first training step of each epoch runs under the torch profiler's memory
    events (`ffpipe.run.measure.MemoryMeter`). Off by default (our choice): the profiler costs the sampled step
    time, and on the CPU it must not see a wire send start (see `MemoryMeter.window`); the benchmarks turn it
    on. Off, the records hold null."""


@dataclass
class PipelineConfig:
    """How the blocks spread over processes: stages of the pipeline and replicas of it."""

    stages: Positive = 1
    """Pipeline stages (one process each)."""
    partition: PartitionRule | list[Positive] = "cost"
    """Blocks per stage: cost (min-max of FLOPs + elementwise work), flops (FLOPs alone), measured (block
    times on the device), equal, or a list of counts."""
    queue_depth: Positive = 2
    """Messages a channel may have in flight (and a receiver may hold ahead)."""
    replicas: Positive = 1
    """Data-parallel replicas of the whole pipeline."""
    wire_dtype: WireDtype = "float32"
    """x and shortcuts at stage boundaries: float32 or bfloat16 (ours: half the bytes; the partition then matters)."""
    timeout_s: PositiveFloat = 60.0
    """Seconds a stage waits for its neighbour (a message, a free send slot) before it declares the neighbour
    dead and the run failed (ours). The wire's caller never blocks inside gloo or NCCL, so this holds on GPUs
    too; raise it when a first step is slow (torch.compile, cuDNN autotuning) or stages wait on evaluation."""


@dataclass
class RunConfig:
    """Where a run's files go."""

    name: str | None = None
    """The run's directory name under out_dir (default: the date and time)."""
    out_dir: str = "runs"
    """Where runs go when --out is not given."""
    keep_checkpoints: Positive = 2
    """Newest complete checkpoints kept."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    run: RunConfig = field(default_factory=RunConfig)
