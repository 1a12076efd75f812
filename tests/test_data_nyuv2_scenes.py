"""nyuv2 (MTAN .npy layout) and the procedural scenes rendered into that layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drmgf.data import nyuv2, scenes
from drmgf.errors import DataError
from drmgf.metrics import NYUV2_BASELINE

H, W = 6, 8


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRMGF_CACHE", str(tmp_path / "cache"))


def sample(rng: np.random.Generator, quantised: bool = True) -> dict[str, np.ndarray]:
    image = rng.integers(0, 256, (H, W, 3)) / 255.0 if quantised else rng.uniform(0, 1, (H, W, 3))
    normal = rng.normal(size=(H, W, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[0, 0] = 0
    depth = rng.uniform(0.5, 9, (H, W, 1))
    depth[0, 0] = 0
    return {"image": image, "label": rng.integers(-1, 13, (H, W)).astype(np.float64), "depth": depth,
            "normal": normal}


def write_tree(root: Path, n_train: int = 6, n_test: int = 3, quantised: bool = True) -> dict[str, list]:
    """A tiny MTAN-layout tree written with plain np.save; returns the samples per split folder."""
    rng = np.random.default_rng(0)
    written: dict[str, list] = {}
    for split, n in (("train", n_train), ("val", n_test)):
        written[split] = [sample(rng, quantised) for _ in range(n)]
        for i, arrays in enumerate(written[split]):
            for modality, array in arrays.items():
                (root / split / modality).mkdir(parents=True, exist_ok=True)
                np.save(root / split / modality / f"{i}.npy", array)
    return written


def load(root: Path | None, **kw: object) -> object:
    args = {"seed": 0, "val_fraction": 0.0, "data_dir": None if root is None else str(root)}
    return nyuv2.load(**{**args, **kw})  # type: ignore[arg-type]


def stacked(samples: list, modality: str) -> torch.Tensor:
    array = np.stack([s[modality] for s in samples])
    return torch.from_numpy(array if array.ndim == 3 else array.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("quantised", [True, False])
def test_nyuv2_reads_layout_exactly(tmp_path: Path, quantised: bool) -> None:
    ref = write_tree(tmp_path, quantised=quantised)
    data = load(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 0, 3)
    image = stacked(ref["train"], "image")
    if quantised:
        assert data.train.images.dtype == torch.uint8
        assert torch.equal(data.train.images, torch.round(image * 255).to(torch.uint8))
    else:
        assert data.train.images.dtype == torch.float32
        torch.testing.assert_close(data.train.images, image.float(), rtol=0, atol=1e-7)
    t = data.test.targets
    assert t["semantic"].dtype == torch.int64 and torch.equal(t["semantic"], stacked(ref["val"], "label").long())
    assert t["depth"].shape == (3, 1, H, W) and t["normal"].shape == (3, 3, H, W)
    torch.testing.assert_close(t["depth"], stacked(ref["val"], "depth").float(), rtol=0, atol=0)
    torch.testing.assert_close(t["normal"], stacked(ref["val"], "normal").float(), rtol=0, atol=0)
    assert [(k.name, k.kind, k.num_classes) for k in data.tasks] == [
        ("semantic", "segmentation", 13), ("depth", "depth", 0), ("normal", "normal", 0)]
    assert data.info["delta_m_baseline"] == list(NYUV2_BASELINE)


def test_nyuv2_numeric_order_limit_and_holdout(tmp_path: Path) -> None:
    ref = write_tree(tmp_path, n_train=12)
    full = load(tmp_path)
    assert torch.equal(full.train.targets["semantic"][10], torch.from_numpy(ref["train"][10]["label"]).long())
    a = load(tmp_path, limit_train=8, limit_test=2, val_fraction=0.25, seed=2)
    b = load(tmp_path, limit_train=8, limit_test=2, val_fraction=0.25, seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (6, 2, 2)
    assert torch.equal(a.val.targets["depth"], b.val.targets["depth"])
    rows = {tuple(x.flatten().tolist()) for x in full.train.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in torch.cat([a.train.images, a.val.images]))


@pytest.mark.parametrize("case", ["missing", "ragged", "labels", "channels", "garbage"])
def test_nyuv2_bad_trees_name_the_path(tmp_path: Path, case: str) -> None:
    write_tree(tmp_path)
    target = {"missing": tmp_path / "train" / "depth" / "4.npy", "ragged": tmp_path / "val" / "normal" / "2.npy",
              "labels": tmp_path / "train" / "label" / "3.npy", "channels": tmp_path / "train" / "image" / "0.npy",
              "garbage": tmp_path / "val" / "depth" / "1.npy"}[case]
    if case == "missing":
        target.unlink()
    elif case == "ragged":
        np.save(target, np.zeros((H, W + 1, 3)))
    elif case == "labels":
        np.save(target, np.full((H, W), 13.0))
    elif case == "channels":
        np.save(target, np.zeros((H, W, 4)))
    else:
        target.write_bytes(b"not numpy")
    with pytest.raises(DataError) as err:
        load(tmp_path)
    assert str(target) in str(err.value) and "\n" not in str(err.value)


def test_nyuv2_needs_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load(None)
    with pytest.raises(DataError, match="no train/ and val/"):
        load(tmp_path)


# ------------------------------------------------------------------ scenes

SMALL = {"val_fraction": 0.25, "limit_train": 12, "limit_test": 4}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two renders of the same seed into different folders, and one of another seed."""
    base = tmp_path_factory.mktemp("scenes")
    return {"a": scenes.load(seed=3, data_dir=str(base / "a"), **SMALL),
            "b": scenes.load(seed=3, data_dir=str(base / "b"), **SMALL),
            "other": scenes.load(seed=4, data_dir=str(base / "c"), **SMALL), "root": base / "a"}


def all_rows(data: object) -> dict[str, torch.Tensor]:
    splits = (data.train, data.val, data.test)
    out = {"image": torch.cat([s.images for s in splits])}
    out.update({k: torch.cat([s.targets[k] for s in splits]) for k in ("semantic", "depth", "normal")})
    return out


def test_scenes_shapes_and_determinism(rendered: dict[str, object]) -> None:
    a, b, other = rendered["a"], rendered["b"], rendered["other"]
    assert (len(a.train), len(a.val), len(a.test)) == (9, 3, 4)
    assert a.train.images.shape == (9, 3, scenes.SIZE, scenes.SIZE) and a.train.images.dtype == torch.uint8
    assert [t.name for t in a.tasks] == ["semantic", "depth", "normal"]
    assert a.tasks[0].num_classes == len(scenes.CLASSES)
    for key, value in all_rows(a).items():
        assert torch.equal(value, all_rows(b)[key]), key
    assert not torch.equal(a.test.images, other.test.images)
    assert a.info["delta_m_baseline"] == list(scenes.SINGLE_TASK_BASELINE)
    assert a.class_names["semantic"] == list(scenes.CLASSES)


def test_scenes_ground_truth_is_consistent(rendered: dict[str, object]) -> None:
    rows = all_rows(rendered["a"])
    label, depth, normal = rows["semantic"], rows["depth"][:, 0], rows["normal"]
    assert int(label.min()) == -1 and int(label.max()) < len(scenes.CLASSES)
    assert 0.005 < float((label == -1).float().mean()) < 0.15
    assert set(label.unique().tolist()) >= {-1, 0, 1, 3, 4}
    assert bool((depth[label >= 0] > 0).all()) and float(depth.max()) < 12
    length = normal.norm(dim=1)
    has = depth > 0
    torch.testing.assert_close(length[has], torch.ones_like(length[has]), rtol=0, atol=1e-5)
    assert bool((length[~has] == 0).all())
    fx, fy, cx, cy = scenes.intrinsics()
    v, u = torch.meshgrid(torch.arange(scenes.SIZE) + 0.5, torch.arange(scenes.SIZE) + 0.5, indexing="ij")
    rays = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)])
    facing = (normal * rays).sum(1)
    assert bool((facing[has] < 1e-6).all())  # every visible surface faces the camera


def test_scenes_normals_agree_with_depth(rendered: dict[str, object]) -> None:
    rows = all_rows(rendered["a"])
    label, depth, normal = rows["semantic"].double(), rows["depth"][:, 0].double(), rows["normal"].double()
    fx, fy, cx, cy = rendered["a"].info["intrinsics"].values()
    v, u = torch.meshgrid(torch.arange(scenes.SIZE) + 0.5, torch.arange(scenes.SIZE) + 0.5, indexing="ij")
    points = torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], 1)  # [N, 3, H, W]
    du = points[..., 1:-1, 2:] - points[..., 1:-1, :-2]
    dv = points[..., 2:, 1:-1] - points[..., :-2, 1:-1]
    fd = torch.nn.functional.normalize(torch.linalg.cross(dv, du, dim=1), dim=1)
    inner = normal[..., 1:-1, 1:-1]
    patch = torch.nn.functional.unfold  # flat: the 3x3 neighbourhood has one label and one normal
    lab = patch(label[:, None], 3).view(len(label), 9, scenes.SIZE - 2, scenes.SIZE - 2)
    nrm = patch(normal, 3).view(len(label), 3, 9, scenes.SIZE - 2, scenes.SIZE - 2)
    flat = (lab == lab[:, 4:5]).all(1) & (lab[:, 4] >= 0) & ((nrm - inner[:, :, None]).abs() < 1e-4).all(2).all(1)
    cos = (fd * inner).sum(1)[flat].clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos))
    assert flat.sum() > 0.5 * flat.numel()
    assert float(angles.median()) < 1.0 and float(torch.quantile(angles, 0.99)) < 5.0


def test_scene_is_independent_of_batch_and_count() -> None:
    few = scenes.render(scenes.sample_scenes(7, 0, 0, 3))
    more = scenes.render(scenes.sample_scenes(7, 0, 0, 5))
    for key in few:
        np.testing.assert_array_equal(few[key], more[key][:3])


def test_scenes_tree_is_the_nyuv2_layout(rendered: dict[str, object]) -> None:
    root = rendered["root"]
    assert (root / "scenes.json").is_file() and (root / "val" / "normal" / "3.npy").is_file()
    train, test = nyuv2.read_tree(root, 0, None, None, len(scenes.CLASSES))
    assert len(train) == 12 and torch.equal(test.images, rendered["a"].test.images)
    image = np.load(root / "train" / "image" / "0.npy")
    assert image.shape == (scenes.SIZE, scenes.SIZE, 3) and image.dtype == np.float32
    assert 0 <= image.min() <= image.max() <= 1


def test_scenes_cache_reuse_and_data_dir_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"val_fraction": 0.5, "limit_train": 2, "limit_test": 1}
    first = scenes.load(seed=1, **small)
    assert str(tmp_path / "cache" / "scenes") in str(first.info["source"])
    (tmp_path / "empty").mkdir()
    into_empty = scenes.load(seed=1, data_dir=str(tmp_path / "empty"), **small)
    assert torch.equal(into_empty.test.images, first.test.images) and (tmp_path / "empty" / "scenes.json").is_file()
    monkeypatch.setattr(scenes, "render", lambda s: pytest.fail("rendered again"))
    again = scenes.load(seed=1, **small)
    assert torch.equal(first.train.images, again.train.images)
    monkeypatch.setattr(scenes, "SINGLE_TASK_BASELINE", tuple(range(1, 10)))
    assert scenes.load(seed=1, **small).info["delta_m_baseline"] == list(range(1, 10))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        scenes.load(seed=1, data_dir=str(tmp_path / "busy"), **small)
    with pytest.raises(DataError, match="other parameters"):
        scenes.load(seed=2, data_dir=str(first.info["source"]), **small)
