"""cifar10 / cifar100: python pickles, image folders and archives, the decode cache, errors."""

from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drmgf.data import cifar, files, image_folder
from drmgf.errors import DataError

REAL_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
REAL_ARCHIVE = Path(os.environ.get("DRMGF_CIFAR10_JPEG", REAL_ARCHIVE)).resolve()
C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRMGF_CACHE", str(tmp_path / "cache"))


def dump(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, np.ndarray]:
    """Tiny cifar-10-batches-py: 5 training batches, a test batch, batches.meta."""
    rng = np.random.default_rng(0)
    folder = root / cifar.C10_DIR
    data = rng.integers(0, 256, (5 * per_batch + n_test, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, len(data))
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        dump(folder / f"data_batch_{i + 1}", {"data": data[rows], "labels": labels[rows].tolist(),
                                              "batch_label": f"training batch {i + 1} of 5"}, protocol=2 + i % 4)
    dump(folder / "test_batch", {"data": data[5 * per_batch:], "labels": labels[5 * per_batch:].tolist()})
    dump(folder / "batches.meta", {"label_names": C10_NAMES, "num_cases_per_batch": per_batch})
    return {"data": data, "labels": labels, "n_train": np.array(5 * per_batch)}


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = root / cifar.C100_DIR
    data = rng.integers(0, 256, (n_train + n_test, 3072), dtype=np.uint8)
    fine, coarse = rng.integers(0, 100, len(data)), rng.integers(0, 20, len(data))
    for name, rows in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        dump(folder / name, {"data": data[rows], "fine_labels": fine[rows].tolist(),
                             "coarse_labels": coarse[rows].tolist()})
    dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                           "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return {"data": data, "fine": fine, "coarse": coarse}


def c10(data_dir: Path | str | None, **kw: object) -> object:
    args = {"seed": 0, "val_fraction": 0.0, "data_dir": None if data_dir is None else str(data_dir)}
    return cifar.load_cifar10(**{**args, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("sub", [False, True])
def test_cifar10_pickles_exact(tmp_path: Path, sub: bool) -> None:
    ref = write_cifar10(tmp_path)
    data = c10(tmp_path / cifar.C10_DIR if sub else tmp_path)
    images = torch.from_numpy(ref["data"].reshape(-1, 3, 32, 32))
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (20, 3, 32, 32)
    assert torch.equal(data.train.images, images[:20]) and torch.equal(data.test.images, images[20:])
    assert data.train.targets["label"].tolist() == ref["labels"][:20].tolist()
    assert data.test.targets["label"].dtype == torch.int64
    assert data.class_names == {"label": C10_NAMES} and data.tasks[0].num_classes == 10
    # channel layout: the first 1024 values of a row are the red plane, row-major
    assert int(data.train.images[0, 1, 0, 5]) == int(ref["data"][0, 1024 + 5])


def test_cifar100_pickles_exact(tmp_path: Path) -> None:
    ref = write_cifar100(tmp_path)
    data = cifar.load_cifar100(seed=0, val_fraction=0.0, data_dir=str(tmp_path))
    assert [(t.name, t.num_classes) for t in data.tasks] == [("fine", 100), ("coarse", 20)]
    assert torch.equal(data.test.images, torch.from_numpy(ref["data"][12:].reshape(-1, 3, 32, 32)))
    assert data.train.targets["fine"].tolist() == ref["fine"][:12].tolist()
    assert data.test.targets["coarse"].tolist() == ref["coarse"][12:].tolist()
    assert data.class_names["coarse"][3] == "coarse3" and len(data.class_names["fine"]) == 100


def test_limit_split_sizes_and_seed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    a = c10(tmp_path, limit_train=10, limit_test=4, val_fraction=0.2, seed=5)
    b = c10(tmp_path, limit_train=10, limit_test=4, val_fraction=0.2, seed=5)
    assert (len(a.train), len(a.val), len(a.test)) == (8, 2, 4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.targets["label"], b.val.targets["label"])
    assert not torch.equal(a.val.images, c10(tmp_path, limit_train=10, val_fraction=0.2, seed=6).val.images)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("case", ["truncated", "not_pickle", "wrong_shape", "missing_key", "code", "label_range"])
def test_corrupt_pickles_name_the_file(tmp_path: Path, case: str) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / cifar.C10_DIR / "data_batch_3"
    good = path.read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "not_pickle": b"hello world",
        "wrong_shape": pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}),
        "missing_key": pickle.dumps({"data": np.zeros((4, 3072), np.uint8)}),
        "code": pickle.dumps({"data": _Evil(), "labels": [0]}),
        "label_range": pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}),
    }[case]
    path.write_bytes(bad)
    with pytest.raises(DataError) as err:
        c10(tmp_path)
    message = str(err.value)
    assert "\n" not in message and (str(path) in message or case == "label_range")


def test_missing_batch_and_missing_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / cifar.C10_DIR / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        c10(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no cifar-100-python"):
        cifar.load_cifar100(seed=0, val_fraction=0.1, data_dir=str(tmp_path / "empty"))


def test_offline_without_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar, "torchvision_download", lambda name, root: False)
    for loader in (cifar.load_cifar10, cifar.load_cifar100):
        with pytest.raises(DataError, match="download failed") as err:
            loader(seed=0, val_fraction=0.1)
        assert "\n" not in str(err.value) and "--data-dir" in str(err.value)


def test_download_into_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar, "torchvision_download", lambda name, root: bool(write_cifar100(root, 3, 2)))
    data = cifar.load_cifar100(seed=0, val_fraction=0.0)
    assert (len(data.train), len(data.test)) == (3, 2)
    assert str(files.cache_root()) in str(data.info["source"])


# ------------------------------------------------------------------ image-folder layout

CLASSES = ["cat", "airplane", "dog"]  # written unsorted: the loader sorts them


def write_image_tree(root: Path, fmt: str = "PNG", per_class: tuple[int, int] = (3, 2)) -> dict[str, list]:
    """{train,test}/<class>/<i>.png with random pixels; returns (label, array) rows in loader order."""
    rng = np.random.default_rng(2)
    rows: dict[str, list] = {"train": [], "test": []}
    for split, count in zip(("train", "test"), per_class):
        for label, cls in enumerate(sorted(CLASSES)):
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                path = root / split / cls / f"{i:04d}.{fmt.lower()}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, format=fmt)
                rows[split].append((label, np.asarray(Image.open(path).convert("RGB"))))
    return rows


def make_tar(folder: Path, archive: Path, top: str = "cifar10") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=top)
    return archive


def check_rows(data: object, rows: dict[str, list]) -> None:
    for split in ("train", "test"):
        got = getattr(data, split)
        want = torch.from_numpy(np.stack([a for _, a in rows[split]]).transpose(0, 3, 1, 2).copy())
        assert got.images.dtype == torch.uint8 and torch.equal(got.images, want)
        assert got.targets["label"].tolist() == [c for c, _ in rows[split]]


@pytest.mark.parametrize("form", ["folder", "nested_folder", "archive"])
def test_image_folder_exact_and_sorted_classes(tmp_path: Path, form: str) -> None:
    rows = write_image_tree(tmp_path / "tree" / "inner")
    source = {"folder": tmp_path / "tree" / "inner", "nested_folder": tmp_path / "tree",
              "archive": make_tar(tmp_path / "tree" / "inner", tmp_path / "c.tar.gz")}[form]
    data = c10(source)
    check_rows(data, rows)
    assert data.class_names == {"label": sorted(CLASSES)} and data.tasks[0].num_classes == 3
    assert data.info["format"] == "image folder"


def test_jpeg_matches_pillow_decode(tmp_path: Path) -> None:
    rows = write_image_tree(tmp_path / "tree", fmt="JPEG")
    check_rows(c10(make_tar(tmp_path / "tree", tmp_path / "j.tar.gz")), rows)


def test_archive_is_decoded_once_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_tree(tmp_path / "tree")
    archive = make_tar(tmp_path / "tree", tmp_path / "c.tar.gz")
    first = c10(archive, val_fraction=0.2)
    key_dir = files.cache_root() / "image-folder" / files.file_key(archive)
    assert (key_dir / "meta.json").is_file() and (key_dir / "train_images.npy").is_file()

    def no_decode(data: bytes, name: str) -> np.ndarray:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(image_folder, "decode", no_decode)
    second = c10(archive, val_fraction=0.2)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.images, second.test.images)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # a replaced archive gets a new key
    with pytest.raises(AssertionError, match="decoded again"):
        c10(archive)


def test_small_limit_decodes_only_kept_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_tree(tmp_path / "tree", per_class=(10, 10))
    archive = make_tar(tmp_path / "tree", tmp_path / "c.tar.gz")
    limited = c10(archive, limit_train=4, limit_test=3, val_fraction=0.25, seed=1)
    assert not (files.cache_root() / "image-folder").exists()  # a small subset is not cached
    full_then_limited = c10(archive, limit_train=20, limit_test=3, seed=1)  # 23 of 60 rows: decodes all, caches
    assert (files.cache_root() / "image-folder").exists()
    again = c10(archive, limit_train=4, limit_test=3, val_fraction=0.25, seed=1)
    assert torch.equal(limited.train.images, again.train.images) and torch.equal(limited.val.images, again.val.images)
    assert torch.equal(limited.test.targets["label"], full_then_limited.test.targets["label"])
    assert (len(limited.train), len(limited.val), len(limited.test)) == (3, 1, 3)


@pytest.mark.parametrize("case", ["corrupt_image", "no_test", "unknown_test_class", "sizes"])
def test_image_folder_errors(tmp_path: Path, case: str) -> None:
    write_image_tree(tmp_path / "tree")
    bad = tmp_path / "tree" / "train" / "dog" / "0001.png"
    if case == "corrupt_image":
        bad.write_bytes(b"\x89PNG not really")
    elif case == "no_test":
        for p in (tmp_path / "tree" / "test").rglob("*.png"):
            p.unlink()
    elif case == "unknown_test_class":
        (tmp_path / "tree" / "test" / "zebra").mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / "tree" / "test" / "zebra" / "0.png")
    else:
        Image.new("RGB", (16, 16)).save(bad)
    with pytest.raises(DataError) as err:
        c10(make_tar(tmp_path / "tree", tmp_path / "c.tar.gz"))
    message = str(err.value)
    assert "\n" not in message
    assert {"corrupt_image": "0001.png", "no_test": "no test/", "unknown_test_class": "zebra",
            "sizes": "different sizes"}[case] in message


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read the archive"):
        c10(path)


@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason="shared cifar10-jpeg.tar.gz not present")
def test_real_jpeg_archive_limited() -> None:
    data = c10(REAL_ARCHIVE, limit_train=300, limit_test=100, val_fraction=0.1)
    assert data.class_names["label"] == C10_NAMES
    assert data.train.images.shape == (270, 3, 32, 32) and len(data.test) == 100
    assert data.train.images.dtype == torch.uint8 and 0.3 < float(data.train.images.float().mean()) / 255 < 0.65


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason="shared cifar10-jpeg.tar.gz not present")
def test_real_jpeg_archive_full_decode_and_cache() -> None:
    data = c10(REAL_ARCHIVE, val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 10000)
    labels = torch.cat([data.train.targets["label"], data.val.targets["label"]])
    assert torch.bincount(labels).tolist() == [5000] * 10
    start = time.perf_counter()
    again = c10(REAL_ARCHIVE, val_fraction=0.1)
    assert time.perf_counter() - start < 5 and torch.equal(again.test.images, data.test.images)
