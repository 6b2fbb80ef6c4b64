"""The offline data sets: IDX parsing and its checks, Fashion-MNIST, digits."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from emulator.studies.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    IdxError,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    parse_idx,
    read_idx,
)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.tobytes()


def test_parse_idx_round_trip() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(a)), a)
    b = np.array([-3, 70000, 5], dtype=">i4")
    got = parse_idx(idx_bytes(b, 0x0C))
    assert np.array_equal(got, [-3, 70000, 5]) and got.dtype == np.int32


@pytest.mark.parametrize(("raw", "msg"), [
    (b"\x00\x00", "too short for an IDX header"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic 01000801"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX element type 0x07"),
    (b"\x00\x00\x08\x00", "IDX with 0 dimensions"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "too short for 2 IDX dimensions"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06", "10 bytes, but the header (3,) of uint8 needs 11"),
])
def test_parse_idx_rejects(raw: bytes, msg: str) -> None:
    with pytest.raises(IdxError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(raw, "f")


def _write_fake(root, n_train: int = 60000, label_max: int = 9, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    files = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, label_max + 1, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 10000, dtype=np.uint8),
    }
    files["train_labels"][0] = label_max
    for key, arr in files.items():
        raw = idx_bytes(arr)
        path = root / (FASHION_MNIST_FILES[key] + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw, compresslevel=1) if gz else raw)


def test_fashion_mnist_from_a_directory(tmp_path, monkeypatch) -> None:
    _write_fake(tmp_path, gz=False)
    d = load_fashion_mnist(tmp_path)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and float(d.x_train.max()) <= 1.0
    raw = read_idx(tmp_path / FASHION_MNIST_FILES["train_images"])
    assert np.array_equal((d.x_train[:, 0] * 255).round().astype(np.uint8), raw)
    monkeypatch.setenv("LPSGLD_FASHION_MNIST", str(tmp_path))
    assert np.array_equal(load_dataset("fashion-mnist").y_test, d.y_test)


def test_fashion_mnist_checks_counts_and_labels(tmp_path) -> None:
    _write_fake(tmp_path, n_train=100)
    with pytest.raises(IdxError, match=r"expected uint8 images of shape \(60000, 28, 28\), got uint8 \(100, 28, 28\)"):
        load_fashion_mnist(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_fake(bad, label_max=10)
    with pytest.raises(IdxError, match=r"label 10 out of range 0\.\.9"):
        load_fashion_mnist(bad)


def test_fashion_mnist_missing_says_what_to_install(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed (bash scripts/setup.sh study)")
def test_real_fashion_mnist() -> None:
    d = load_fashion_mnist()
    assert d.x_train.shape == (60000, 1, 28, 28) and len(d.y_test) == 10000
    # balanced classes: 6000 / 1000 of each (the published data set)
    assert np.array_equal(np.bincount(d.y_train), np.full(10, 6000))
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 1000))
    s = d.subset(1000, 200).pad_to(32)
    assert s.x_train.shape == (1000, 1, 32, 32) and s.input_shape == (1, 32, 32)
    assert np.array_equal(s.x_train[:, :, 2:30, 2:30], d.x_train[:1000])


def test_digits_split_is_fixed() -> None:
    a, b = load_digits(), load_digits()
    assert a.x_train.shape == (1297, 1, 8, 8) and a.x_test.shape == (500, 1, 8, 8)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert float(a.x_train.max()) == 1.0


def test_dataset_bad_arguments() -> None:
    d = load_digits()
    with pytest.raises(ValueError, match=r"n_train must be in \[1, 1297\] for digits, got 5000"):
        d.subset(5000)
    with pytest.raises(ValueError, match="cannot pad 8x8 images symmetrically to 11x11"):
        d.pad_to(11)
    with pytest.raises(ValueError, match="unknown data set 'cifar10'"):
        load_dataset("cifar10")


def test_truncated_gzip_is_an_idx_error(tmp_path) -> None:
    raw = gzip.compress(idx_bytes(np.zeros((4, 4), np.uint8)))
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IdxError, match="not a readable gzip file"):
        read_idx(tmp_path / "x.gz")


def test_read_idx_names_a_gz_file_with_corrupt_deflate_data(tmp_path) -> None:
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    bad = good[:20] + bytes(b ^ 0x5A for b in good[20:40]) + good[40:]  # the deflate stream, damaged
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(bad)
    with pytest.raises(IdxError, match=f"{path}: not a readable gzip file"):  # was a bare zlib.error
        read_idx(path)
