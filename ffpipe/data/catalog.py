"""What ffpipe knows about each dataset: file names, shapes, class names, split sizes and where to fetch them.

Everything dataset-specific lives in this one table so that the reader, lookup and download code stay generic.
`MIRRORS` and `MD5S` are plain module-level dicts on purpose: tests point them at a local HTTP server, and a
user behind a proxy or with an internal mirror can do the same before calling `load_dataset`.

The validation-set sizes: seed 000 §2.2 splits the official 60,000 MNIST training images into 50,000 train
and 10,000 validation images and keeps the official 10,000 test images apart. Applying the same rule to
Fashion-MNIST, and holding out 5,000 of CIFAR-10's 50,000 training images (the usual 45,000/5,000), are our
choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ffpipe.errors import FFPipeError

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
"""The Fashion-MNIST slice shipped inside the package (built by `ffpipe.data.build_embedded`)."""

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four files of an MNIST-format dataset, by role; on disk each may also end in `.gz`."""

EMBEDDED_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "val_images": "val-images-idx3-ubyte.gz",
    "val_labels": "val-labels-idx1-ubyte.gz",
    "test_images": "test-images-idx3-ubyte.gz",
    "test_labels": "test-labels-idx1-ubyte.gz",
}

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_DIR = "cifar-10-batches-py"
"""The folder inside the CIFAR-10 tarball; a user who unpacked the tarball by hand has the batches there."""


@dataclass(frozen=True)
class DatasetSpec:
    """The fixed facts about one dataset."""

    name: str
    format: str  # "idx" | "cifar" | "embedded"
    image_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]
    train_size: int  # after the validation split
    val_size: int  # carved out of the official training set with `split_seed` (embedded: its own file)
    test_size: int  # the official test set, untouched

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def system_dirname(self) -> str:
        """Debian installs `dataset-fashion-mnist` under /usr/share/datasets/fashion-mnist/: dashes, not _."""
        return self.name.replace("_", "-")


SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist_small": DatasetSpec(
        "fashion_mnist_small",
        "embedded",
        (1, 28, 28),
        FASHION_MNIST_CLASSES,
        6_000,
        1_000,
        1_000,
    ),
    "mnist": DatasetSpec("mnist", "idx", (1, 28, 28), MNIST_CLASSES, 50_000, 10_000, 10_000),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        "idx",
        (1, 28, 28),
        FASHION_MNIST_CLASSES,
        50_000,
        10_000,
        10_000,
    ),
    "cifar10": DatasetSpec("cifar10", "cifar", (3, 32, 32), CIFAR10_CLASSES, 45_000, 5_000, 10_000),
}

DATASETS: tuple[str, ...] = tuple(SPECS)

MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    "cifar10": [
        "https://www.cs.toronto.edu/~kriz/",
    ],
}
"""Base URLs per dataset, tried in order; a file's URL is the base followed by the file name in `MD5S`."""

MD5S: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {
        CIFAR10_ARCHIVE: "c58f30108f718f92721af3b95e74349a",
    },
}
"""The published md5 of every downloadable file: the upstream READMEs (Fashion-MNIST), torchvision (MNIST,
CIFAR-10). Only downloads are checked against them: Debian's dataset-fashion-mnist recompresses the same
images, so its .gz files carry other md5s and are validated by structure instead."""


def get_spec(name: str) -> DatasetSpec:
    """The spec for `name`, or one FFPipeError that lists the valid names."""
    try:
        return SPECS[name]
    except KeyError:
        raise FFPipeError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
