"""``cifar10`` and ``cifar100``: Krizhevsky's CIFAR (2009), 32x32 RGB, 50,000 train + 10,000 test.

Both read the "python version" pickles torchvision downloads (``cifar-10-batches-py``,
``cifar-100-python``) from ``--data-dir`` (the folder itself or the folder that contains it);
without ``--data-dir`` from the cache, downloading them with torchvision when online.
``cifar10`` also reads an image-folder layout ``{train,test}/<class>/*.jpg|png``, as a folder or a
tar archive (see :mod:`drmgf.data.image_folder`).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from drmgf.data.base import DataBundle, Split, holdout, limit
from drmgf.data.files import cache_root, torchvision_download
from drmgf.data.image_folder import is_archive, load_images
from drmgf.errors import DataError
from drmgf.tasks import TaskSpec

log = logging.getLogger(__name__)

C10_DIR, C100_DIR = "cifar-10-batches-py", "cifar-100-python"
C10_FILES = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])  # train, test
C100_FILES = (["train"], ["test"])
C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
C100_MEAN, C100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
PIXELS = 3 * 32 * 32
# What a CIFAR pickle may construct: numpy arrays and dtypes, nothing that runs code.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
    ("numpy", "dtype"), ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays, lists, dicts, strings and numbers."""

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core", "numpy._core")  # pickles written before numpy 2
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle as a dict with ``str`` keys (Python 2 pickles are decoded as latin-1).

    Raises:
        DataError: the file is missing, truncated, or not a CIFAR pickle.
    """
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            obj = _ArrayUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing") from exc
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR pickle (holds a {type(obj).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: Path, label_keys: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images [N, 3, 32, 32] uint8 and labels {key: [N] int64} of one CIFAR pickle."""
    batch = read_pickle(path)
    missing = [k for k in ("data", *label_keys) if k not in batch]
    if missing:
        raise DataError(f"{path} lacks the keys {missing} of a CIFAR pickle")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, {PIXELS}]")
    labels = {k: np.asarray(batch[k], dtype=np.int64) for k in label_keys}
    for key, value in labels.items():
        if value.shape != (data.shape[0],):
            raise DataError(f"{path}: {len(value)} {key} for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32), labels


def read_split(root: Path, files: list[str], keys: dict[str, str], classes: dict[str, list[str]]) -> Split:
    """Concatenate batches into one split, checking label ranges against the class names.

    Args:
        keys: pickle label key -> task name (``{"fine_labels": "fine"}``).
        classes: task name -> class names.
    """
    parts = [read_batch(root / f, tuple(keys)) for f in files]
    images = np.concatenate([p[0] for p in parts])
    targets = {task: np.concatenate([p[1][key] for p in parts]) for key, task in keys.items()}
    for task, value in targets.items():
        n = len(classes[task])
        if value.size and (value.min() < 0 or value.max() >= n):
            raise DataError(f"{root}: {task} labels outside 0..{n - 1} ({n} class names in the meta file)")
    return Split(torch.from_numpy(images), {k: torch.from_numpy(v) for k, v in targets.items()})


def class_names(root: Path, meta_file: str, keys: dict[str, str]) -> dict[str, list[str]]:
    """Class names per label from the meta pickle: ``keys`` maps label -> meta key."""
    meta = read_pickle(root / meta_file)
    bad = [k for k in keys.values() if not isinstance(meta.get(k), (list, tuple))]
    if bad:
        raise DataError(f"{root / meta_file} lacks the lists of class names {bad}")
    return {label: [_text(n) for n in meta[key]] for label, key in keys.items()}  # type: ignore[attr-defined]


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def pickle_root(data_dir: Path, subdir: str, first_file: str) -> Path | None:
    """The pickle folder: ``data_dir/subdir``, or ``data_dir`` itself when it holds the batches."""
    for folder in (data_dir / subdir, data_dir):
        if (folder / first_file).is_file():
            return folder
    return None


def find_pickles(data_dir: str | None, subdir: str, first_file: str, tv_name: str) -> Path | None:
    """The pickle folder under ``data_dir``; without one in the cache, downloading it if needed."""
    if data_dir is not None:
        return pickle_root(Path(data_dir).expanduser(), subdir, first_file)
    cache = cache_root() / "cifar"
    found = pickle_root(cache, subdir, first_file)
    if found is None:
        log.info("%s not in the cache; trying a download into %s", subdir, cache)
        if torchvision_download(tv_name, cache):
            found = pickle_root(cache, subdir, first_file)
    return found


def _bundle(name: str, train_full: Split, test: Split, seed: int, val_fraction: float, **fields: object) -> DataBundle:
    train, val = holdout(train_full, val_fraction, seed)
    return DataBundle(name=name, train=train, val=val, test=test, **fields)  # type: ignore[arg-type]


def _missing(name: str, subdir: str, data_dir: str | None, extra: str = "") -> DataError:
    if data_dir is not None:
        return DataError(f"--data-dir {data_dir} holds no {subdir} folder (the python version of {name}){extra}")
    return DataError(f"{name} not found and the download failed (offline?): pass --data-dir pointing at its "
                     f"python version {subdir} (https://www.cs.toronto.edu/~kriz/cifar.html){extra}")


def _is_image_layout(path: Path) -> bool:
    """An archive, or a folder with ``train/`` directly or under one top-level folder."""
    return is_archive(path) or (path / "train").is_dir() or any(p.is_dir() for p in path.glob("*/train"))


def load_cifar10(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """CIFAR-10 from the pickles or from an image folder/archive; one task ``label``."""
    source = Path(data_dir).expanduser() if data_dir is not None else None
    if source is not None and pickle_root(source, C10_DIR, "data_batch_1") is None and _is_image_layout(source):
        return _cifar10_images(source, seed, val_fraction, limit_train, limit_test)
    root = find_pickles(data_dir, C10_DIR, "data_batch_1", "CIFAR10")
    if root is None:
        raise _missing("CIFAR-10", C10_DIR, data_dir, " or a {train,test}/<class>/ image folder or .tar.gz")
    names = class_names(root, "batches.meta", {"label": "label_names"})
    train, test = (read_split(root, files, {"labels": "label"}, names) for files in C10_FILES)
    return _bundle("cifar10", limit(train, limit_train, seed), limit(test, limit_test, seed), seed, val_fraction,
                   tasks=(TaskSpec("label", "classification", len(names["label"])),), mean=C10_MEAN,
                   std=C10_STD, class_names=names,
                   info={"source": str(root), "format": "python pickles", "data_seed": seed})


def _cifar10_images(source: Path, seed: int, val_fraction: float, limit_train: int | None,
                    limit_test: int | None) -> DataBundle:
    data = load_images(source, seed, limit_train, limit_test)
    return _bundle("cifar10", data.train, data.test, seed, val_fraction,
                   tasks=(TaskSpec("label", "classification", len(data.classes)),), mean=C10_MEAN, std=C10_STD,
                   class_names={"label": data.classes},
                   info={"source": str(source), "format": "image folder", "data_seed": seed})


def load_cifar100(
    *, seed: int, val_fraction: float, data_dir: str | None = None, limit_train: int | None = None,
    limit_test: int | None = None, **_: object,
) -> DataBundle:
    """CIFAR-100 from the pickles; tasks ``fine`` (100 classes) and ``coarse`` (20 superclasses)."""
    root = find_pickles(data_dir, C100_DIR, "train", "CIFAR100")
    if root is None:
        raise _missing("CIFAR-100", C100_DIR, data_dir)
    names = class_names(root, "meta", {"fine": "fine_label_names", "coarse": "coarse_label_names"})
    keys = {"fine_labels": "fine", "coarse_labels": "coarse"}
    train, test = (read_split(root, files, keys, names) for files in C100_FILES)
    tasks = tuple(TaskSpec(k, "classification", len(v)) for k, v in names.items())
    return _bundle("cifar100", limit(train, limit_train, seed), limit(test, limit_test, seed), seed, val_fraction,
                   tasks=tasks, mean=C100_MEAN, std=C100_STD, class_names=names,
                   info={"source": str(root), "format": "python pickles", "data_seed": seed})
