"""The one training loop: every method, every model, with per-epoch metrics and exact resume."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drmgf.config import TrainConfig, parse_task_weights, validate
from drmgf.data import DATASETS, DataBundle, load_dataset
from drmgf.errors import ConfigError, UserError
from drmgf.methods import METHODS, Method, build_method
from drmgf.models import MODELS, build_model, model_tasks
from drmgf.tasks import TaskSpec
from drmgf.train.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint, save_model_only
from drmgf.train.context import ProgressFn, TrainContext, no_progress
from drmgf.train.evaluate import evaluate, selection_score
from drmgf.utils import atomic_write_json, atomic_write_text, package_versions, resolve_device, seed_everything

log = logging.getLogger(__name__)

# Fields that may differ when a run is resumed: they do not change the numbers of the epochs done.
RESUMABLE_CHANGES = {("optim", "epochs"), ("run", "resume"), ("run", "device"), ("run", "threads"), ("run", "out")}


@dataclass
class Run:
    """A run assembled from its configuration, ready to train or evaluate."""

    cfg: TrainConfig
    data: DataBundle
    model: nn.Module
    tasks: tuple[TaskSpec, ...]
    device: torch.device
    user_model: bool = False

    @property
    def baseline(self) -> tuple[float, ...] | None:
        base = self.data.info.get("delta_m_baseline")
        return tuple(base) if base else None  # type: ignore[arg-type]


def select_tasks(cfg: TrainConfig, data: DataBundle) -> tuple[TaskSpec, ...]:
    """The dataset labels the model is built for (``--label``: one for multi-exit, a subset otherwise)."""
    entry = MODELS[cfg.model.model]
    names = [n.strip() for n in cfg.data.label.split(",")] if cfg.data.label else []
    known = [t.name for t in data.tasks]
    for n in names:
        if n not in known:
            raise ConfigError(f"--label must name tasks of {data.name} {known}, got {n!r}")
    if entry.multi_exit:
        if len(names) > 1:
            raise ConfigError(f"--label takes one label for the multi-exit model {cfg.model.model}, got {cfg.data.label!r}")
        usable = [t for t in data.tasks if t.kind in entry.kinds]
        chosen = data.task(names[0]) if names else (usable[0] if usable else data.tasks[0])
        selected: tuple[TaskSpec, ...] = (chosen,)
    else:
        selected = tuple(data.task(n) for n in names) if names else data.tasks
    bad = [t for t in selected if t.kind not in entry.kinds]
    if bad:
        raise ConfigError(f"--model {cfg.model.model} predicts {'/'.join(entry.kinds)} tasks; {data.name} task "
                          f"{bad[0].name!r} is {bad[0].kind} (try a model listed by `drmgf list` for it)")
    return selected


def resolve(cfg: TrainConfig, data: DataBundle) -> TrainConfig:
    """Fill the ``auto`` choices that depend on the data (optimizer, learning rate, batch size)."""
    dense = any(t.kind != "classification" for t in data.tasks)
    opt = cfg.optim.optimizer if cfg.optim.optimizer != "auto" else ("adam" if dense else "sgd")
    lr = cfg.optim.lr if cfg.optim.lr is not None else (1e-3 if opt == "adam" else 0.05)
    batch = cfg.optim.batch_size if cfg.optim.batch_size is not None else (8 if dense else 64)
    return cfg.replace(optim={"optimizer": opt, "lr": lr, "batch_size": batch})


@torch.no_grad()
def init_output_biases(model: nn.Module, tasks: tuple[TaskSpec, ...], data: DataBundle) -> None:
    """Start depth outputs at the training set's mean depth (models offering ``init_output_bias``).

    A zero-initialised depth head needs thousands of Adam steps to climb to metric depths of a
    few metres; starting at the mean removes that warm-up without changing the architecture.
    """
    if not hasattr(model, "init_output_bias"):
        return
    for task in tasks:
        if task.kind == "depth":
            depth = data.train.targets[task.target]
            valid = depth[depth != 0]
            if valid.numel():
                model.init_output_bias(task.name, float(valid.double().mean()))


def output_tasks(model: nn.Module, data: DataBundle, example: torch.Tensor) -> tuple[TaskSpec, ...]:
    """TaskSpecs of a model's outputs; a user model's output names must be dataset task names."""
    declared = getattr(model, "tasks", None)
    known = {t.name: t for t in data.tasks}
    if declared and all(isinstance(t, TaskSpec) for t in declared):
        missing = [t.target for t in declared if t.target not in known]
        if missing:
            raise UserError(f"model tasks predict labels {missing} that {data.name} lacks ({sorted(known)}); "
                            "set each TaskSpec's target to a dataset label")
        return tuple(declared)
    names = model_tasks(model, example)
    missing = [n for n in names if n not in known]
    if missing:
        raise UserError(f"model outputs {missing} are not tasks of {data.name} ({sorted(known)}); "
                        "name each output after the label it predicts")
    return tuple(known[n] for n in names)


def assemble(cfg: TrainConfig, *, model: nn.Module | None = None, data: DataBundle | None = None) -> Run:
    """Data, model and tasks of a run (no training state)."""
    validate(cfg, datasets=list(DATASETS), models=list(MODELS), methods=list(METHODS))
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    user_model = model is not None
    data = data if data is not None else load_dataset(cfg.data)
    if len(data.train) < 2:
        raise ConfigError(f"{data.name} keeps {len(data.train)} training image(s) after the validation hold-out; "
                          "raise --limit-train or lower --val-fraction")
    cfg = resolve(cfg, data)
    seed_everything(cfg.run.seed)
    if model is None:
        model = build_model(cfg.model.model, select_tasks(cfg, data), data.input_shape[0],
                            depth=cfg.model.depth, width=cfg.model.width, exit_every=cfg.model.exit_every)
        init_output_biases(model, tuple(getattr(model, "tasks", ())), data)
    model = model.to(device)
    example = torch.zeros((2, *data.input_shape), device=device)
    return Run(cfg=cfg, data=data, model=model, tasks=output_tasks(model, data, example), device=device,
               user_model=user_model)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The network optimizer; every group remembers its base rate in ``initial_lr``."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    return opt


def schedule_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate factor of ``epoch`` (0-based) under the named schedule."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule == "step":
        return 0.5 ** (epoch // max(1, math.ceil(epochs / 3)))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group to ``initial_lr * factor``; returns the first group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])


def _check_resume(saved: dict[str, Any], cfg: TrainConfig, out: Path) -> None:
    now = cfg.to_dict()
    for section, values in saved.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES or now.get(section, {}).get(key) == value:
                continue
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{out} was trained with {flag} {value!r}, not {now[section][key]!r}; "
                              "resume with the run's own settings or start a new --out")


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def run_info(run: Run, method: Method) -> dict[str, Any]:
    """The content of ``config.json``: resolved configuration, tasks, data and versions."""
    return {
        "config": run.cfg.to_dict(), "tasks": [t.to_dict() for t in run.tasks], "method": method.name,
        "model_source": "user" if run.user_model else "registry",
        "data": {"name": run.data.name, "input_shape": list(run.data.input_shape),
                 "preprocessing": run.data.preprocessing(), "class_names": run.data.class_names,
                 "sizes": {"train": len(run.data.train), "val": len(run.data.val), "test": len(run.data.test)},
                 "info": run.data.info},
        "parameters": sum(p.numel() for p in run.model.parameters()), "versions": package_versions(),
    }


class Trainer:
    """Trains one run directory epoch by epoch; see ``fit``."""

    def __init__(self, run: Run, progress: ProgressFn = no_progress) -> None:
        self.run, self.out = run, Path(run.cfg.run.out)
        cfg = run.cfg
        self.method = build_method(cfg.method)
        self.optimizer = make_optimizer(cfg, run.model)
        weights = parse_task_weights(cfg.optim.task_weights, [t.name for t in run.tasks])
        self.ctx = TrainContext(model=run.model, tasks=run.tasks, weights=weights, data=run.data, cfg=cfg,
                                device=run.device, optimizer=self.optimizer, progress=progress,
                                augment=cfg.data.augment and all(t.kind == "classification" for t in run.tasks))
        self.method.setup(self.ctx)
        self.method.to(run.device)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.best = 0, -math.inf

    def prepare_directory(self) -> None:
        """Refuse to overwrite a run; on ``--resume`` load its last checkpoint."""
        cfg, ckpt_path = self.run.cfg, self.out / LAST
        if not cfg.run.resume:
            if ckpt_path.exists() or (self.out / "metrics.jsonl").exists():
                raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", run_info(self.run, self.method))
            return
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(ckpt["config"], cfg, self.out)
        self.run.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.method.load_state(ckpt["method"])
        torch.set_rng_state(ckpt["rng"])
        self.history, self.start_epoch = list(ckpt["history"]), int(ckpt["epoch"])
        scores = [r["val_score"] for r in self.history if "val_score" in r]
        self.best = max(scores) if scores else -math.inf
        _write_metrics(self.out, self.history)  # drop any line written after the checkpoint
        atomic_write_json(self.out / "config.json", run_info(self.run, self.method))

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch: train, evaluate val and test, checkpoint; returns the metrics row."""
        run, cfg = self.run, self.run.cfg
        started = time.perf_counter()
        factor = schedule_factor(cfg.optim.schedule, epoch, cfg.optim.epochs)
        lr = set_lr(self.optimizer, factor * self.method.lr_factor(epoch, cfg.optim.epochs))
        train_logs = self.method.train_epoch(self.ctx, epoch)
        train_s = time.perf_counter() - started
        kw = {"batch_size": cfg.run.eval_batch_size, "device": run.device, "baseline": run.baseline}
        val = evaluate(run.model, run.data.val, run.tasks, run.data, **kw) if len(run.data.val) else None
        test = evaluate(run.model, run.data.test, run.tasks, run.data, **kw)
        row: dict[str, Any] = {"epoch": epoch + 1, "method": self.method.name, "lr": lr,
                               "train_s": round(train_s, 3), "wall_s": round(time.perf_counter() - started, 3),
                               "train": train_logs, "val": val, "test": test}
        if val is not None:
            row["val_score"] = selection_score(val)
        self.history.append(row)
        self._save(epoch, row)
        return row

    def _save(self, epoch: int, row: dict[str, Any]) -> None:
        cfg_dict, tasks = self.run.cfg.to_dict(), [t.to_dict() for t in self.run.tasks]
        method_state = self.method.state()
        save_checkpoint(self.out / LAST, epoch=epoch + 1, model=self.run.model, optimizer=self.optimizer,
                        method_state=method_state, config=cfg_dict, history=self.history, tasks=tasks)
        _write_metrics(self.out, self.history)
        score = row.get("val_score")
        if score is not None and score > self.best:
            self.best = score
            save_model_only(self.out / BEST, epoch=epoch + 1, model=self.run.model, score=score,
                            config=cfg_dict, tasks=tasks, method_state=method_state)


def fit(
    cfg: TrainConfig,
    *,
    model: nn.Module | None = None,
    data: DataBundle | None = None,
    progress: ProgressFn = no_progress,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train a run to ``cfg.optim.epochs`` epochs and return its directory.

    Args:
        cfg: run configuration (``cfg.run.resume`` continues ``cfg.run.out``).
        model: any ``nn.Module`` returning ``dict[name -> output]`` whose names are dataset tasks;
            default: the registered ``cfg.model.model``.
        data: a prepared ``DataBundle``; default: ``cfg.data.dataset``.
        progress: progress callback (stage, step, total, loss).
        on_epoch: called with each epoch's metrics row.
    """
    out = Path(cfg.run.out)
    if not cfg.run.resume and ((out / LAST).exists() or (out / "metrics.jsonl").exists()):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    trainer = Trainer(assemble(cfg, model=model, data=data), progress)
    trainer.prepare_directory()
    if trainer.start_epoch >= trainer.run.cfg.optim.epochs:
        log.info("%s already has %d epochs", trainer.out, trainer.start_epoch)
    for epoch in range(trainer.start_epoch, trainer.run.cfg.optim.epochs):
        row = trainer.train_epoch(epoch)
        if on_epoch is not None:
            on_epoch(row)
    return trainer.out


def load_run(run_dir: str | Path, *, checkpoint: str = LAST, device: str = "cpu",
             model: nn.Module | None = None) -> tuple[Run, dict[str, Any]]:
    """Rebuild a finished run's data and model from its directory and load a checkpoint into it.

    Returns:
        (run, checkpoint dict).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a drmgf run directory (no config.json); pass the --out of `drmgf train`")
    info = json.loads(config_path.read_text())
    if model is None and info.get("model_source") == "user":
        raise UserError(f"{run_dir} was trained with a user-defined model; load it from Python with "
                        "drmgf.train.load_run(run_dir, model=YourModel())")
    ckpt = load_checkpoint(run_dir / checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg = cfg.replace(run={"device": device, "resume": False, "threads": None})
    run = assemble(cfg, model=model)
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise UserError(f"the weights in {run_dir / checkpoint} do not fit the model built from its config; "
                        "was the checkpoint copied from another run?") from None
    run.model.eval()
    return run, ckpt


def evaluate_run(run_dir: str | Path, *, split: str = "test", checkpoint: str = LAST,
                 device: str = "cpu") -> dict[str, Any]:
    """Evaluate a run's checkpoint on ``split``; same numbers as the matching metrics.jsonl entry."""
    run, ckpt = load_run(run_dir, checkpoint=checkpoint, device=device)
    data_split = {"test": run.data.test, "val": run.data.val, "train": run.data.train}[split]
    if len(data_split) == 0:
        raise UserError(f"the {split} split of {run_dir} is empty (trained with --val-fraction "
                        f"{run.cfg.data.val_fraction}); evaluate --split test")
    result = evaluate(run.model, data_split, run.tasks, run.data, batch_size=run.cfg.run.eval_batch_size,
                      device=run.device, baseline=run.baseline)
    return {"run": str(run_dir), "split": split, "epoch": int(ckpt["epoch"]), **result}


__all__ = ["Run", "Trainer", "assemble", "evaluate_run", "fit", "load_run"]
