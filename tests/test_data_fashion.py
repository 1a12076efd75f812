"""fashion-mnist and multi-fashion: idx parsing, file lookup, errors, pair composition."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from drmgf.data import fashion, files, multi_fashion
from drmgf.data.idx import parse_idx
from drmgf.errors import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRMGF_CACHE", str(tmp_path / "cache"))


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic 0x000008<ndim>, big-endian sizes, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny Fashion-MNIST idx files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def load(data_dir: Path | None, **kw: object) -> object:
    args = {"seed": 0, "val_fraction": 0.0, "data_dir": None if data_dir is None else str(data_dir)}
    return fashion.load(**{**args, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_exactly(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion(tmp_path / "fm", gz=gz)
    data = load(tmp_path / "fm")
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (30, 1, 28, 28)
    assert torch.equal(data.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(data.train.targets["label"], torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.test.targets["label"].dtype == torch.int64
    assert [t.name for t in data.tasks] == ["label"] and data.tasks[0].num_classes == 10
    assert data.class_names["label"][9] == "Ankle boot" and data.input_shape == (1, 28, 28)


def test_torchvision_raw_layout_and_validation_split(tmp_path: Path) -> None:
    arrays = write_fashion(tmp_path / "root" / "FashionMNIST" / "raw")
    data = load(tmp_path / "root", val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 12)
    rows = torch.cat([data.train.images, data.val.images])[:, 0].reshape(30, -1)
    original = torch.from_numpy(arrays["train-images-idx3-ubyte"]).reshape(30, -1)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, original.tolist()))


def test_limit_and_seed_determinism(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fm")
    a = load(tmp_path / "fm", limit_train=10, limit_test=5, val_fraction=0.2, seed=3)
    b = load(tmp_path / "fm", limit_train=10, limit_test=5, val_fraction=0.2, seed=3)
    c = load(tmp_path / "fm", limit_train=10, limit_test=5, val_fraction=0.2, seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (8, 2, 5)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.train.images, c.train.images)


def _corrupt(folder: Path, name: str, data: bytes) -> None:
    (folder / f"{name}.gz").write_bytes(data)


@pytest.mark.parametrize("case", ["magic", "short_body", "truncated_gzip", "label_count", "not_gzip"])
def test_corrupt_files_give_one_line_error_naming_the_file(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "fm"
    arrays = write_fashion(folder)
    images = idx_bytes(arrays["train-images-idx3-ubyte"])
    bad = {
        "magic": ("train-images-idx3-ubyte", gzip.compress(b"\x00\x00\x09\x03" + images[4:])),
        "short_body": ("train-images-idx3-ubyte", gzip.compress(images[:-100])),
        "truncated_gzip": ("train-images-idx3-ubyte", gzip.compress(images)[:-50]),
        "label_count": ("train-labels-idx1-ubyte", gzip.compress(idx_bytes(np.zeros(7, np.uint8)))),
        "not_gzip": ("train-labels-idx1-ubyte", b"this is not gzip"),
    }[case]
    _corrupt(folder, *bad)
    with pytest.raises(DataError) as err:
        load(folder)
    message = str(err.value)
    assert "\n" not in message and bad[0] in message


def test_parse_idx_rejects_header_only_garbage() -> None:
    with pytest.raises(DataError, match="truncated"):
        parse_idx(b"\x00\x00\x08", 3, "x")
    parsed = parse_idx(idx_bytes(np.arange(6, dtype=np.uint8).reshape(1, 2, 3)), 3, "x")
    assert parsed.tolist() == [[[0, 1, 2], [3, 4, 5]]]


def test_missing_data_dir_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lacks the Fashion-MNIST idx files") as err:
        load(tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_not_installed_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(fashion, "torchvision_download", lambda name, root: False)
    with pytest.raises(DataError) as err:
        load(None)
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "--data-dir" in str(err.value)
    assert "\n" not in str(err.value)


def test_download_fallback_reads_torchvision_raw_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "nowhere")

    def fake_download(name: str, root: Path) -> bool:
        write_fashion(root / "FashionMNIST" / "raw", n_train=5, n_test=3)
        return True

    monkeypatch.setattr(fashion, "torchvision_download", fake_download)
    data = load(None)
    assert (len(data.train), len(data.test)) == (5, 3)
    assert str(files.cache_root()) in str(data.info["source"])


def test_compose_overlays_with_pixelwise_max() -> None:
    left = np.full((1, 28, 28), 100, np.uint8)
    right = np.arange(28 * 28, dtype=np.int64).reshape(1, 28, 28) % 251
    right = right.astype(np.uint8)
    canvas = multi_fashion.compose(left, right)[0]
    assert canvas.shape == (36, 36) and canvas.dtype == np.uint8
    assert canvas[0, 0] == 100 and canvas[27, 27] == max(100, right[0, 19, 19])
    assert canvas[35, 35] == right[0, 27, 27] and canvas[8, 8] == max(100, right[0, 0, 0])
    assert canvas[0, 35] == 0 and canvas[35, 0] == 0 and canvas[30, 2] == 0
    assert canvas[10, 30] == right[0, 2, 22] and canvas[5, 20] == 100  # right only / left only


def write_constant_items(folder: Path, n_train: int, n_test: int) -> None:
    """Items of constant brightness i + 1 (label i % 10), so a canvas tells which items it holds."""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(1, n + 1, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n, dtype=np.uint8) % 10))


def test_multi_fashion_pairs(tmp_path: Path) -> None:
    folder = tmp_path / "fm"
    folder.mkdir()
    write_constant_items(folder, 40, 20)
    kw = {"val_fraction": 0.25, "data_dir": str(folder)}
    data = multi_fashion.load(seed=1, **kw)
    assert data.train.images.shape == (30, 1, 36, 36) and (len(data.val), len(data.test)) == (10, 20)
    assert [t.name for t in data.tasks] == ["left", "right"]
    for split in (data.train, data.test):
        left_item = split.images[:, 0, 0, 0].long() - 1
        right_item = split.images[:, 0, 35, 35].long() - 1
        assert torch.equal(split.targets["left"], left_item % 10)
        assert torch.equal(split.targets["right"], right_item % 10)
        assert bool((left_item != right_item).all())
        middle = torch.maximum(left_item, right_item) + 1
        assert torch.equal(split.images[:, 0, 14, 14].long(), middle)
    again, other = multi_fashion.load(seed=1, **kw), multi_fashion.load(seed=2, **kw)
    assert torch.equal(again.test.images, data.test.images)
    assert not torch.equal(other.test.images, data.test.images)


@pytest.mark.skipif(not fashion._complete(fashion.DEBIAN_DIR), reason="Debian's dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist() -> None:
    data = load(None, val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    labels = torch.cat([data.train.targets["label"], data.val.targets["label"]])
    assert torch.bincount(labels).tolist() == [6000] * 10
    mean = float(data.train.images.float().mean() / 255)
    assert abs(mean - fashion.MEAN[0]) < 0.01
    pairs = multi_fashion.load(seed=0, val_fraction=0.1, limit_train=300, limit_test=100)
    assert pairs.train.images.shape == (270, 1, 36, 36) and len(pairs.test) == 100
