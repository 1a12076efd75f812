"""The training loop: run directory, checkpoints, exact resume, user models, refusals, atomic writes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from drmgf.config import TrainConfig, parse_task_weights
from drmgf.data import load_dataset
from drmgf.errors import ConfigError, UserError
from drmgf.methods import METHODS
from drmgf.tasks import TaskSpec
from drmgf.train import evaluate_run, fit, load_run
from drmgf.train.checkpoint import BEST, LAST, load_checkpoint
from drmgf.train.evaluate import evaluate
from drmgf.train.loop import Trainer, assemble, schedule_factor, set_lr
from drmgf.utils import atomic_torch_save

MakeCfg = Callable[..., TrainConfig]
Digests = Callable[[Path], dict[str, str]]
RUN_FILES = {"config.json", "metrics.jsonl", LAST, BEST}
TIMING = ("train_s", "wall_s")


def metrics_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def load_weights_only(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Nested state dicts equal exactly (tensors bit for bit)."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert_close(a[key], b[key], rtol=0, atol=0, msg=str(key))
        else:
            assert a[key] == b[key], key


def assert_same_runs(a: Path, b: Path) -> None:
    """Two run directories hold the same numbers: metrics (timings aside), weights and optimizer state."""
    assert without_timing(metrics_lines(a)) == without_timing(metrics_lines(b))
    ca, cb = load_weights_only(a / LAST), load_weights_only(b / LAST)
    assert ca["epoch"] == cb["epoch"]
    assert_same_state(ca["model"], cb["model"])
    assert_same_state(ca["optimizer"], cb["optimizer"])
    assert_same_state(ca["method"], cb["method"])


def stray_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


class TwoHeads(nn.Module):
    """A user model: torchvision's resnet18 trunk with two heads named after two ``shapes`` tasks."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.trunk = torchvision.models.resnet18(num_classes=6)
        features = self.trunk.fc.in_features
        self.trunk.fc = nn.Identity()
        self.shape, self.color = nn.Linear(features, 6), nn.Linear(features, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {"shape": self.shape(z), "color": self.color(z)}


# ---------------------------------------------------------------- the run directory


def test_fit_writes_config_metrics_and_checkpoints(make_cfg: MakeCfg) -> None:
    rows: list[dict[str, Any]] = []
    out = fit(make_cfg(optim={"epochs": 2}), on_epoch=rows.append)
    assert out.is_dir() and {p.name for p in out.iterdir()} == RUN_FILES
    lines = metrics_lines(out)
    assert lines == json.loads(json.dumps(rows))  # one line per epoch, as reported to on_epoch
    assert [r["epoch"] for r in lines] == [1, 2]
    exits = ["exit0", "exit1", "exit2"]
    for row in lines:
        assert row["method"] == "ew"
        assert 0 <= row["train_s"] <= row["wall_s"]
        assert list(row["test"]["tasks"]) == exits and list(row["train"]) == exits
        for name, metrics in row["test"]["tasks"].items():
            assert set(metrics) == {"loss", "top1"} and 0 <= metrics["top1"] <= 1, name
            assert math.isfinite(metrics["loss"])
        top1 = [m["top1"] for m in row["test"]["tasks"].values()]
        assert row["test"]["summary"]["mean_top1"] == pytest.approx(sum(top1) / 3, abs=1e-12)
        assert row["val_score"] == row["val"]["summary"]["mean_top1"]
    # cosine schedule over two epochs from the resolved SGD rate 0.05
    assert [r["lr"] for r in lines] == pytest.approx([0.05, 0.025], abs=1e-12)

    info = json.loads((out / "config.json").read_text())
    assert info["config"] == make_cfg(optim={"epochs": 2, "optimizer": "sgd", "lr": 0.05}).to_dict()
    assert [t["name"] for t in info["tasks"]] == exits and {t["target"] for t in info["tasks"]} == {"shape"}
    assert info["method"] == "ew"
    assert info["data"]["sizes"] == {"train": 22, "val": 2, "test": 8}
    assert info["data"]["input_shape"] == [3, 32, 32]


def test_checkpoint_loads_weights_only_and_round_trips_model_and_optimizer(make_cfg: MakeCfg) -> None:
    cfg = make_cfg(optim={"epochs": 2})
    trainer = Trainer(assemble(cfg))
    trainer.prepare_directory()
    trainer.train_epoch(0)
    ckpt = load_weights_only(Path(cfg.run.out) / LAST)
    assert ckpt["epoch"] == 1 and ckpt["format"] == 1
    assert {"model", "optimizer", "method", "rng", "config", "history", "tasks", "versions"} <= set(ckpt)
    assert_same_state(ckpt["model"], trainer.run.model.state_dict())
    assert_same_state(ckpt["optimizer"], trainer.optimizer.state_dict())
    assert ckpt["optimizer"]["state"], "SGD momentum buffers are saved"
    assert ckpt["history"] == metrics_lines(Path(cfg.run.out))

    resumed = Trainer(assemble(cfg.replace(run={"resume": True})))
    resumed.prepare_directory()
    assert resumed.start_epoch == 1
    assert_same_state(resumed.run.model.state_dict(), trainer.run.model.state_dict())
    assert_same_state(resumed.optimizer.state_dict(), trainer.optimizer.state_dict())
    best = load_weights_only(Path(cfg.run.out) / BEST)
    assert best["epoch"] == 1 and best["score"] == ckpt["history"][0]["val_score"]


def test_evaluate_run_returns_the_metrics_lines_numbers(make_cfg: MakeCfg) -> None:
    out = fit(make_cfg(optim={"epochs": 2}))
    lines = metrics_lines(out)
    result = evaluate_run(out)
    assert result["epoch"] == 2 and result["split"] == "test"
    assert {"tasks": result["tasks"], "summary": result["summary"]} == lines[-1]["test"]
    val = evaluate_run(out, split="val")
    assert {"tasks": val["tasks"], "summary": val["summary"]} == lines[-1]["val"]
    best_epoch = max(lines, key=lambda r: r["val_score"])["epoch"]  # first maximum, as fit keeps it
    best = evaluate_run(out, checkpoint=BEST)
    assert best["epoch"] == best_epoch
    assert {"tasks": best["tasks"], "summary": best["summary"]} == lines[best_epoch - 1]["test"]


# ---------------------------------------------------------------- resume


def test_resume_equals_an_uninterrupted_run(make_cfg: MakeCfg) -> None:
    """Train 1 epoch, resume to 2: the same as 2 straight (ew: the cosine factor of epoch 0 is 1 for any length)."""
    one = make_cfg("a", optim={"epochs": 1})
    fit(one)
    fit(one.replace(optim={"epochs": 2}, run={"resume": True}))
    straight = fit(make_cfg("b", optim={"epochs": 2}))
    assert_same_runs(Path(one.run.out), straight)


def test_resume_of_a_finished_run_changes_nothing(make_cfg: MakeCfg, file_digests: Digests) -> None:
    cfg = make_cfg()
    out = fit(cfg)
    before = file_digests(out)
    fit(cfg.replace(run={"resume": True}))
    after = file_digests(out)
    after.pop("config.json"), before.pop("config.json")  # rewritten: it records the resumed settings
    assert after == before
    assert json.loads((out / "config.json").read_text())["config"]["run"]["resume"] is True


class Interrupted(Exception):
    """Stands for Ctrl-C or a killed job after an epoch's checkpoint."""


def stop_after_first_epoch(row: dict[str, Any]) -> None:
    raise Interrupted(row["epoch"])


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_resumes_an_interrupted_run_exactly(make_cfg: MakeCfg, method: str) -> None:
    model = "resnet_sdn" if method == "ge" else "mt_resnet"  # ge needs exits
    sections = {"method": {"method": method}, "model": {"model": model, "width": 4}, "optim": {"epochs": 2}}
    cfg = make_cfg("a", **sections)
    with pytest.raises(Interrupted):
        fit(cfg, on_epoch=stop_after_first_epoch)
    assert len(metrics_lines(Path(cfg.run.out))) == 1
    fit(cfg.replace(run={"resume": True}))
    straight = fit(make_cfg("b", **sections))
    assert_same_runs(Path(cfg.run.out), straight)
    for row in metrics_lines(straight):
        assert row["method"] == method
        assert all(math.isfinite(v) for m in row["test"]["tasks"].values() for v in m.values())
        assert all(math.isfinite(v) for v in row["train"].values())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_a_multi_exit_model(make_cfg: MakeCfg, method: str) -> None:
    out = fit(make_cfg(method={"method": method}, model={"model": "resnet_sdn", "width": 4, "depth": 8}))
    (row,) = metrics_lines(out)
    assert list(row["test"]["tasks"]) == ["exit0", "exit1", "exit2"]
    assert all(math.isfinite(v) for m in row["test"]["tasks"].values() for v in m.values())


def test_same_config_same_numbers_with_augmentation(make_cfg: MakeCfg) -> None:
    a = fit(make_cfg("a", data={"augment": True}))
    b = fit(make_cfg("b", data={"augment": True}))
    c = fit(make_cfg("c"))
    assert_same_runs(a, b)
    assert metrics_lines(a)[0]["train"] != metrics_lines(c)[0]["train"]  # augmentation changes the batches


# ---------------------------------------------------------------- refusals


def test_fit_refuses_to_overwrite_a_run(make_cfg: MakeCfg, file_digests: Digests) -> None:
    cfg = make_cfg()
    out = fit(cfg)
    before = file_digests(out)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        fit(cfg)
    assert file_digests(out) == before


@pytest.mark.parametrize(("sections", "flag"), [
    ({"optim": {"batch_size": 4}}, "--batch-size"),
    ({"run": {"seed": 1}}, "--seed"),
    ({"data": {"limit_train": 30}}, "--limit-train"),
    ({"model": {"width": 8}}, "--width"),
    ({"optim": {"lr": 0.1}}, "--lr"),
])
def test_resume_refuses_a_changed_setting_naming_the_flag(make_cfg: MakeCfg, file_digests: Digests,
                                                          sections: dict, flag: str) -> None:
    cfg = make_cfg()
    out = fit(cfg)
    before = file_digests(out)
    changed = cfg.replace(run={"resume": True}).replace(**sections)
    with pytest.raises(ConfigError, match=f"trained with {flag} "):
        fit(changed.replace(optim={"epochs": 2}))
    assert file_digests(out) == before


def test_resume_without_a_checkpoint_is_a_user_error(make_cfg: MakeCfg) -> None:
    with pytest.raises(UserError, match="no checkpoint at"):
        fit(make_cfg(run={"resume": True}))


# ---------------------------------------------------------------- user models


def test_a_user_model_returning_a_dict_trains_and_reloads(make_cfg: MakeCfg) -> None:
    cfg = make_cfg(optim={"batch_size": 11})
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    out = fit(cfg, model=TwoHeads(), data=data)
    (row,) = metrics_lines(out)
    assert list(row["test"]["tasks"]) == ["shape", "color"] and list(row["train"]) == ["shape", "color"]
    info = json.loads((out / "config.json").read_text())
    assert [t["name"] for t in info["tasks"]] == ["shape", "color"]
    assert info["parameters"] == sum(p.numel() for p in TwoHeads().parameters())
    run, _ = load_run(out, model=TwoHeads())
    result = evaluate(run.model, run.data.test, run.tasks, run.data, batch_size=16)
    assert result == row["test"]


def test_a_user_model_with_outputs_that_are_not_tasks_is_a_user_error(make_cfg: MakeCfg, tiny_data) -> None:
    class Renamed(TwoHeads):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(x)
            return {"shape": out["shape"], "colour": out["color"]}

    cfg = make_cfg()
    with pytest.raises(UserError, match=r"model outputs \['colour'\] are not tasks of shapes"):
        fit(cfg, model=Renamed(), data=tiny_data)
    assert not Path(cfg.run.out).exists()


def test_a_user_model_declaring_tasks_the_data_lacks_is_a_user_error(make_cfg: MakeCfg, tiny_data) -> None:
    class Declared(TwoHeads):
        tasks = (TaskSpec("shape", "classification", 6), TaskSpec("colour", "classification", 6))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(x)
            return {"shape": out["shape"], "colour": out["color"]}

    cfg = make_cfg()
    with pytest.raises(UserError, match="colour"):
        fit(cfg, model=Declared(), data=tiny_data)
    assert not Path(cfg.run.out).exists()


# ---------------------------------------------------------------- atomic writes and corrupt files


def _failing_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    Path(f).write_bytes(b"half a checkpoint")
    raise RuntimeError("disk full")


def test_atomic_torch_save_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.ones(2)}, target)
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", _failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"a": torch.zeros(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_crash_while_checkpointing_keeps_the_previous_epoch(make_cfg: MakeCfg, file_digests: Digests,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg("a")
    out = fit(cfg)
    before = file_digests(out)
    resume = cfg.replace(optim={"epochs": 2}, run={"resume": True})
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _failing_save)
        with pytest.raises(RuntimeError, match="disk full"):
            fit(resume)
    assert not stray_files(out)
    assert {k: v for k, v in file_digests(out).items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"}
    fit(resume)  # the run continues from epoch 1 as if nothing happened
    assert_same_runs(out, fit(make_cfg("b", optim={"epochs": 2})))
    assert not stray_files(out)


@pytest.mark.parametrize("content", ["truncated", "foreign", "pickle"])
def test_a_corrupt_checkpoint_is_a_user_error(make_cfg: MakeCfg, content: str) -> None:
    cfg = make_cfg()
    out = fit(cfg)
    path = out / LAST
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "foreign":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"format": 1, "model": nn.Linear(1, 1)}, path)  # a pickled module: not weights-only
    corrupt = path.read_bytes()
    with pytest.raises(UserError, match="checkpoint"):
        load_checkpoint(path)
    with pytest.raises(UserError, match="checkpoint"):
        evaluate_run(out)
    with pytest.raises(UserError, match="checkpoint"):
        fit(cfg.replace(optim={"epochs": 2}, run={"resume": True}))
    assert path.read_bytes() == corrupt


def test_evaluate_run_outside_a_run_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a drmgf run directory"):
        evaluate_run(tmp_path)


def test_evaluating_an_empty_validation_split_is_a_user_error(make_cfg: MakeCfg) -> None:
    out = fit(make_cfg(data={"val_fraction": 0.0}))
    with pytest.raises(UserError, match="val"):
        evaluate_run(out, split="val")


# ---------------------------------------------------------------- schedule and config


@pytest.mark.parametrize(("schedule", "epochs", "factors"), [
    ("cosine", 4, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("step", 6, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]),
    ("step", 4, [1.0, 1.0, 0.5, 0.5]),
    ("none", 3, [1.0, 1.0, 1.0]),
])
def test_schedule_factors(schedule: str, epochs: int, factors: list[float]) -> None:
    assert [schedule_factor(schedule, e, epochs) for e in range(epochs)] == pytest.approx(factors, abs=1e-12)


def test_set_lr_scales_every_group_from_its_initial_rate() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.4}])
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    assert set_lr(opt, 0.5) == pytest.approx(0.05)
    assert set_lr(opt, 0.25) == pytest.approx(0.025)  # from the initial rate, not compounded
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.025, 0.1])


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    cfg = TrainConfig().replace(optim={"epochs": 3}, method={"alpha": 0.2})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({"optim": {"epochs": 3}}) == TrainConfig().replace(optim={"epochs": 3})
    with pytest.raises(ConfigError, match="unknown keys \\['epoch'\\]"):
        TrainConfig.from_dict({"optim": {"epoch": 3}})


def test_parse_task_weights() -> None:
    assert parse_task_weights(None, ["a", "b"]) == {"a": 1.0, "b": 1.0}
    assert parse_task_weights("b=10, a=0.5", ["a", "b"]) == {"a": 0.5, "b": 10.0}
    for bad, message in (("c=1", "--task-weights must look like"), ("a=x", "not a number"), ("a=-1", ">= 0")):
        with pytest.raises(ConfigError, match=message):
            parse_task_weights(bad, ["a", "b"])


def test_task_weights_scale_the_training_loss(make_cfg: MakeCfg) -> None:
    """A zero weight removes an exit's loss from the gradient: its private head never moves."""
    cfg = make_cfg(optim={"task_weights": "exit0=0", "weight_decay": 0.0})
    run = assemble(cfg)
    head0 = {k: v.clone() for k, v in run.model.exits[0].state_dict().items()}
    head2 = {k: v.clone() for k, v in run.model.exits[2].state_dict().items()}
    fit(cfg, model=run.model, data=run.data)
    for k, v in run.model.exits[0].state_dict().items():
        if k.endswith(("weight", "bias")) and "running" not in k:
            assert_close(v, head0[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(run.model.exits[2].fc.weight, head2["fc.weight"])
