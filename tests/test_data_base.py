"""In-memory splits, hold-out, limits, minibatch iteration, preprocessing and the ``shapes`` generator."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from drmgf.config import DataConfig
from drmgf.data import DATASETS, list_datasets, load_dataset, shapes
from drmgf.data.base import (
    DataBundle, Split, augment_crop_flip, holdout, iterate, limit, normalize, num_batches,
)


def indexed_split(n: int) -> Split:
    """Rows that carry their own index, so every selection can be traced back."""
    ids = torch.arange(n)
    return Split(ids.view(n, 1, 1, 1).expand(n, 1, 2, 2).to(torch.uint8).clone(), {"id": ids, "twice": 2 * ids})


def ids_of(split: Split) -> list[int]:
    assert torch.equal(split.targets["twice"], 2 * split.targets["id"])  # targets stay aligned
    assert torch.equal(split.images[:, 0, 0, 0].long(), split.targets["id"])  # and images with them
    return split.targets["id"].tolist()


# ---------------------------------------------------------------- Split and DataBundle


def test_split_rejects_targets_of_another_length() -> None:
    with pytest.raises(ValueError, match="'id' has 3 rows for 4 images"):
        Split(torch.zeros(4, 1, 2, 2), {"id": torch.arange(3)})


def test_split_subset_by_slice_and_index() -> None:
    split = indexed_split(6)
    assert ids_of(split.subset(slice(1, 4))) == [1, 2, 3]
    assert ids_of(split.subset(torch.tensor([5, 0]))) == [5, 0]
    assert len(split) == 6


def test_bundle_input_shape_task_lookup_and_preprocessing(tiny_data: DataBundle) -> None:
    assert tiny_data.input_shape == (3, 32, 32)
    assert tiny_data.task("color") == shapes.TASKS[1]
    with pytest.raises(KeyError):
        tiny_data.task("nope")
    pre = tiny_data.preprocessing()
    assert pre["input_shape"] == [3, 32, 32] and pre["scale"] == pytest.approx(1 / 255)
    assert pre["mean"] == [0.42] * 3 and pre["std"] == [0.27] * 3 and pre["layout"] == "NCHW"


# ---------------------------------------------------------------- holdout and limit


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(20, 0.1, 2), (20, 0.25, 5), (7, 0.1, 1), (20, 0.0, 0)])
def test_holdout_is_disjoint_complete_and_sized(n: int, fraction: float, n_val: int) -> None:
    train, val = holdout(indexed_split(n), fraction, seed=3)
    assert len(val) == n_val and len(train) == n - n_val
    assert set(ids_of(train)).isdisjoint(ids_of(val))
    assert sorted(ids_of(train) + ids_of(val)) == list(range(n))
    assert ids_of(train) == sorted(ids_of(train))  # original order kept


def test_holdout_is_seeded() -> None:
    split = indexed_split(40)
    _, a = holdout(split, 0.25, seed=0)
    _, b = holdout(split, 0.25, seed=0)
    _, c = holdout(split, 0.25, seed=1)
    assert ids_of(a) == ids_of(b)
    assert ids_of(a) != ids_of(c)


def test_limit_is_a_seeded_subset() -> None:
    split = indexed_split(30)
    a, b, c = limit(split, 10, seed=0), limit(split, 10, seed=0), limit(split, 10, seed=1)
    assert len(a) == 10 and set(ids_of(a)) <= set(range(30)) and len(set(ids_of(a))) == 10
    assert ids_of(a) == ids_of(b) != ids_of(c)
    assert ids_of(a) != list(range(10))  # random, not the first rows
    assert limit(split, None, seed=0) is split
    assert limit(split, 99, seed=0) is split


# ---------------------------------------------------------------- iterate


@pytest.mark.parametrize(("n", "bs", "drop_last", "expected"), [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2)])
def test_num_batches(n: int, bs: int, drop_last: bool, expected: int) -> None:
    assert num_batches(n, bs, drop_last) == expected


def test_iterate_without_generator_is_in_order() -> None:
    batches = list(iterate(indexed_split(10), 4))
    assert [t["id"].tolist() for _, t in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(torch.equal(x[:, 0, 0, 0].long(), t["id"]) for x, t in batches)


def test_iterate_shuffled_covers_every_row_once_per_epoch() -> None:
    split = indexed_split(11)
    orders = []
    for seed in (0, 0, 1):
        batches = list(iterate(split, 4, gen=torch.Generator().manual_seed(seed)))
        assert [len(t["id"]) for _, t in batches] == [4, 4, 3]
        assert all(torch.equal(x[:, 0, 0, 0].long(), t["id"]) for x, t in batches)
        order = [i for _, t in batches for i in t["id"].tolist()]
        assert sorted(order) == list(range(11))
        orders.append(order)
    assert orders[0] == orders[1]  # same generator seed, same order
    assert orders[0] != orders[2]  # another seed, another order
    assert orders[0] != list(range(11))  # shuffled


def test_iterate_drop_last_and_max_batches() -> None:
    split = indexed_split(10)
    gen = torch.Generator().manual_seed(0)
    assert [len(t["id"]) for _, t in iterate(split, 4, gen=gen, drop_last=True)] == [4, 4]
    assert [t["id"].tolist() for _, t in iterate(split, 3, max_batches=2)] == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------------- preprocessing


def test_normalize_scales_uint8_and_not_floats() -> None:
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.5, 0.0, 0.2), (0.5, 2.0, 0.1)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    expected = torch.tensor([(0 - 0.5) / 0.5, (1 - 0.0) / 2.0, (0.2 - 0.2) / 0.1]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert_close(out, expected, rtol=1e-6, atol=1e-6)
    floats = torch.full((1, 3, 1, 1), 0.7)
    assert_close(normalize(floats, mean, std).flatten(), torch.tensor([0.4, 0.35, 5.0]), rtol=1e-6, atol=1e-6)


def _crops(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop-and-optional-flip ``augment_crop_flip`` may produce of one image [C, H, W]."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    out = []
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[:, dy:dy + h, dx:dx + w]
        out += [crop, crop.flip(-1)]
    return out


def test_augment_crop_flip_keeps_shapes_and_is_a_crop_or_flip_of_each_image() -> None:
    images = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    out = augment_crop_flip(images, torch.Generator().manual_seed(1), pad=1)
    assert out.shape == images.shape and out.dtype == images.dtype
    for i in range(len(images)):
        assert any(torch.equal(out[i], c) for c in _crops(images[i], 1)), i
    assert not torch.equal(out, images)
    flips_only = augment_crop_flip(images, torch.Generator().manual_seed(1), pad=0)
    assert all(torch.equal(flips_only[i], images[i]) or torch.equal(flips_only[i], images[i].flip(-1))
               for i in range(len(images)))


def test_augment_crop_flip_is_deterministic_by_generator() -> None:
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = augment_crop_flip(images, torch.Generator().manual_seed(5))
    b = augment_crop_flip(images, torch.Generator().manual_seed(5))
    c = augment_crop_flip(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- shapes


def test_shapes_generate_is_deterministic_by_seed_with_labels_in_range() -> None:
    a, b, c = shapes.generate(12, seed=4), shapes.generate(12, seed=4), shapes.generate(12, seed=5)
    assert a.images.shape == (12, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    assert not torch.equal(a.images, c.images)
    assert set(a.targets) == {t.name for t in shapes.TASKS}
    for task in shapes.TASKS:
        labels = torch.cat([a.targets[task.name], c.targets[task.name]])
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < task.num_classes, task.name
    assert a.images.float().std() > 10  # not a blank image


def test_shapes_labels_use_every_class_on_enough_images() -> None:
    split = shapes.generate(60, seed=0)
    for task in shapes.TASKS:
        assert set(split.targets[task.name].tolist()) == set(range(task.num_classes)), task.name


def test_registered_shapes_sizes_and_holdout() -> None:
    assert list_datasets() == list(DATASETS) and "shapes" in DATASETS
    cfg = DataConfig(limit_train=20, limit_test=6, val_fraction=0.25, data_seed=3)
    data = load_dataset(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 6)
    assert data.tasks == shapes.TASKS and data.input_shape == (3, 32, 32)
    again = load_dataset(cfg)
    assert torch.equal(data.val.images, again.val.images) and torch.equal(data.test.images, again.test.images)
    other = load_dataset(cfg, seed=4)
    assert not torch.equal(data.test.images, other.test.images)
