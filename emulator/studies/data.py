"""Offline data sets for the studies: Fashion-MNIST from IDX files, scikit-learn's digits.

Nothing is downloaded. Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``; IDX ``.gz`` files under
``/usr/share/datasets/fashion-mnist/``) or from a directory named by ``$LPSGLD_FASHION_MNIST``
or ``root=`` holding the same four files (gzipped or not). ``read_idx`` checks the magic
number, the element type, the dimensions against the file size; ``load_fashion_mnist`` checks
the 60,000/10,000 counts, 28x28 images and labels in 0..9.

Digits (1797 8x8 images) is bundled with scikit-learn; it is split 1297/500 by a fixed
permutation so every run and every machine sees the same split.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
DATASETS = ("fashion-mnist", "digits")


class IdxError(ValueError):
    """An IDX file whose header or size is not what it must be."""


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX blob: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, data."""
    if len(raw) < 4:
        raise IdxError(f"{name}: {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{name}: bad IDX magic {raw[:4].hex()} (must start with 0000)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise IdxError(f"{name}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise IdxError(f"{name}: IDX with 0 dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IdxError(f"{name}: {len(raw)} bytes, too short for {ndim} IDX dimensions")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    want = head + math.prod(dims) * dtype.itemsize  # Python ints: no overflow on a crafted header
    if len(raw) != want:
        raise IdxError(f"{name}: {len(raw)} bytes, but the header {dims} of {dtype} needs {want}")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped (``.gz``) or plain."""
    p = Path(path)
    raw = p.read_bytes()
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # truncated, corrupt deflate data, or not gzip at all
            raise IdxError(f"{p}: not a readable gzip file ({e})") from None
    return parse_idx(raw, str(p))


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    return None


@dataclass(frozen=True)
class Dataset:
    """Images as float32 in [0, 1], shape (N, C, H, W); labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first ``n_train``/``n_test`` examples (None: all); a ValueError if more than exist."""
        for label, n, have in (("n_train", n_train, len(self.y_train)), ("n_test", n_test, len(self.y_test))):
            if n is not None and not 1 <= n <= have:
                raise ValueError(f"{label} must be in [1, {have}] for {self.name}, got {n}")
        name = self.name if n_train is None and n_test is None else \
            f"{self.name}[{n_train or len(self.y_train)}/{n_test or len(self.y_test)}]"
        return Dataset(name, self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                       self.y_test[:n_test], self.classes)

    def pad_to(self, size: int) -> Dataset:
        """Zero-pad the images symmetrically to ``size`` x ``size`` (28 -> 32 for the ResNet stand-in)."""
        h, w = self.input_shape[1:]
        if size < h or size < w or (size - h) % 2 or (size - w) % 2:
            raise ValueError(f"cannot pad {h}x{w} images symmetrically to {size}x{size}")
        ph, pw = (size - h) // 2, (size - w) // 2

        def pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))

        return Dataset(f"{self.name}@{size}", pad(self.x_train), self.y_train, pad(self.x_test), self.y_test,
                       self.classes)


def fashion_mnist_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$LPSGLD_FASHION_MNIST``, else the Debian package's directory."""
    if root is not None:
        return Path(root)
    env = os.environ.get("LPSGLD_FASHION_MNIST")
    return Path(env) if env else FASHION_MNIST_DIR


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST, 60,000 train / 10,000 test 28x28 grey images, 10 classes (offline only)."""
    base = fashion_mnist_root(root)
    paths = {k: _find(base, stem) for k, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {base} (missing {', '.join(missing)}[.gz]). Install the Debian package: "
            f"`apt-get install dataset-fashion-mnist` (bash scripts/setup.sh study does it), or point "
            f"LPSGLD_FASHION_MNIST at a directory with the four IDX files. Nothing is downloaded.")
    arr = {k: read_idx(p) for k, p in paths.items() if p is not None}
    for split, n in (("train", 60000), ("test", 10000)):
        img, lab = arr[f"{split}_images"], arr[f"{split}_labels"]
        if img.dtype != np.uint8 or img.shape != (n, 28, 28):
            raise IdxError(f"{paths[f'{split}_images']}: expected uint8 images of shape ({n}, 28, 28), "
                           f"got {img.dtype} {img.shape}")
        if lab.dtype != np.uint8 or lab.shape != (n,):
            raise IdxError(f"{paths[f'{split}_labels']}: expected {n} uint8 labels, got {lab.dtype} {lab.shape}")
        if int(lab.max()) > 9:
            raise IdxError(f"{paths[f'{split}_labels']}: label {int(lab.max())} out of range 0..9")

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / np.float32(255))[:, None]

    return Dataset("fashion-mnist", images(arr["train_images"]), arr["train_labels"].astype(np.int64),
                   images(arr["test_images"]), arr["test_labels"].astype(np.int64), FASHION_MNIST_CLASSES)


def load_digits(n_test: int = 500, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (1797 8x8 images, values 0..16 scaled to [0, 1]), fixed split."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: bash scripts/setup.sh study "
                          "(or pip install scikit-learn)") from e
    d = sk_digits()
    x = (d.images.astype(np.float32) / np.float32(16))[:, None]
    y = d.target.astype(np.int64)
    if not 1 <= n_test < len(y):
        raise ValueError(f"n_test must be in [1, {len(y) - 1}], got {n_test}")
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[n_test:], perm[:n_test]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], tuple(str(i) for i in range(10)))


def load_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    """``"fashion-mnist"`` or ``"digits"``."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name == "digits":
        return load_digits()
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
