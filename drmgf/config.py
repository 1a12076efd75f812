"""Frozen configuration dataclasses; the CLI builds its flags from them.

Every field carries its help text in ``metadata["help"]``; the flag is the field name with dashes
(``limit_train`` -> ``--limit-train``). ``validate`` is the one place that checks values, and its
messages name the flag and show the bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from drmgf.errors import ConfigError


def _f(default: Any, help: str, **extra: Any) -> Any:  # noqa: A002 - mirrors argparse
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how much of it."""

    dataset: str = _f("shapes", "dataset name (see `drmgf list`)")
    data_dir: str | None = _f(None, "directory (or archive) holding a real dataset's files")
    data_seed: int = _f(0, "seed of procedural data generation and of the validation hold-out")
    label: str | None = _f(None, "models with exits: the label every exit predicts (default: the dataset's first "
                                 "task); models with task heads: tasks to train, comma separated (default: all)")
    limit_train: int | None = _f(None, "use (or generate) at most N training images, validation included")
    limit_test: int | None = _f(None, "use (or generate) at most N test images")
    val_fraction: float = _f(0.1, "fraction of the training images held out for validation")
    augment: bool = _f(False, "random crop and flip on classification data")


@dataclass(frozen=True)
class ModelConfig:
    """Which network."""

    model: str = _f("resnet_sdn", "model name (see `drmgf list`)")
    width: int | None = _f(None, "base width in channels (model default when unset)")
    depth: int | None = _f(None, "depth: resnet 8/20/56 (model default when unset)")
    exit_every: int | None = _f(None, "resnet_sdn: an exit every N residual blocks (default: after every stage)")


@dataclass(frozen=True)
class OptimConfig:
    """How the network weights are optimised."""

    epochs: int = _f(10, "training epochs (one DR-MGF/Meta-GF period per epoch)")
    batch_size: int | None = _f(None, "minibatch size (auto: 64 for classification, 8 for dense tasks)")
    optimizer: str = _f("auto", "sgd, adam, or auto (sgd for classification, adam for dense tasks)")
    lr: float | None = _f(None, "network learning rate (auto: 0.05 for sgd, 1e-3 for adam)")
    momentum: float = _f(0.9, "sgd momentum")
    weight_decay: float = _f(5e-4, "weight decay of the network optimizer")
    schedule: str = _f("cosine", "learning-rate schedule: cosine, step (halve every third of training) or none")
    task_weights: str | None = _f(None, "per-task loss weights lambda, e.g. 'semantic=1,depth=1,normal=10'")


@dataclass(frozen=True)
class MethodConfig:
    """Which training method, and its hyperparameters (each used only by the methods it names)."""

    method: str = _f("ew", "training method (see `drmgf list`)")
    alpha: float | None = _f(None, "drmgf/metagf: weight of the other tasks' losses in a task pass (drmgf 0.5, metagf 0.1)")
    dominance: float = _f(10.0, "drmgf: route weight c_t of the current task (others get 1)")
    v_lr: float = _f(1e-4, "drmgf: Adam learning rate of the importance variables v")
    s_lr: float = _f(0.1, "drmgf/metagf: Adam learning rate of the meta fusion variables")
    s_init: float = _f(1e-3, "drmgf: initial fusion scale s")
    ema: float = _f(0.9, "drmgf/metagf: EMA of the meta variables after each phase-2 period (0 = off)")
    phase_switch: float = _f(0.5, "drmgf: fraction of the epochs with dynamic routes (phase 1)")
    period_steps: int | None = _f(None, "drmgf/metagf: minibatches per task pass and fusion pass (default: one epoch)")
    reset_between_tasks: bool = _f(False, "drmgf/metagf: reset optimizer moments, BN buffers and v before every task pass")
    metagf_mode: str = _f("layer", "metagf: fusion weight per tensor (layer) or per output channel (channel)")
    cagrad_c: float = _f(0.4, "cagrad: radius c of the conflict-averse ball")
    gradnorm_alpha: float = _f(1.5, "gradnorm: restoring-force asymmetry alpha")
    dwa_temperature: float = _f(2.0, "dwa: softmax temperature")
    weight_lr: float = _f(0.025, "uw/gradnorm: learning rate of the loss weights")


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes."""

    out: str = _f("runs/run", "run directory (config, metrics, checkpoints)")
    seed: int = _f(0, "seed of model initialisation and minibatch order")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice)")
    eval_batch_size: int = _f(256, "minibatch size for evaluation")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> TrainConfig:
        """Rebuild from ``to_dict`` output; unknown keys are errors, missing keys take defaults."""
        parts = {}
        for f in dataclasses.fields(cls):
            sub = f.default_factory()  # type: ignore[misc]
            given = dict(data.get(f.name, {}))
            known = {g.name for g in dataclasses.fields(sub)}
            unknown = set(given) - known
            if unknown:
                raise ConfigError(f"config section {f.name!r} has unknown keys {sorted(unknown)}")
            parts[f.name] = dataclasses.replace(sub, **given)
        return cls(**parts)

    def replace(self, **sections: dict[str, Any]) -> TrainConfig:
        """A copy with some fields of some sections changed: ``cfg.replace(optim={"epochs": 3})``."""
        return dataclasses.replace(
            self, **{k: dataclasses.replace(getattr(self, k), **v) for k, v in sections.items()}
        )


def parse_task_weights(text: str | None, task_names: list[str]) -> dict[str, float]:
    """``'a=1,b=2'`` -> {a: 1.0, b: 2.0}; unnamed tasks get 1."""
    weights = {name: 1.0 for name in task_names}
    if not text:
        return weights
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise ConfigError(
                f"--task-weights must look like 'task=weight,...' with tasks from {task_names}, got {text!r}"
            )
        try:
            weights[name] = float(value)
        except ValueError:
            raise ConfigError(f"--task-weights: weight of {name!r} is not a number: {value!r}") from None
        if weights[name] < 0:
            raise ConfigError(f"--task-weights: weight of {name!r} must be >= 0, got {value}")
    return weights


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainConfig, *, datasets: list[str], models: list[str], methods: list[str]) -> None:
    """Check every value once, raising ``ConfigError`` naming the flag and the bad value."""
    d, m, o, me, r = cfg.data, cfg.model, cfg.optim, cfg.method, cfg.run
    _check(d.dataset in datasets, f"--dataset must be one of {datasets}, got {d.dataset!r}")
    _check(m.model in models, f"--model must be one of {models}, got {m.model!r}")
    _check(me.method in methods, f"--method must be one of {methods}, got {me.method!r}")
    _check(0 <= d.val_fraction < 1, f"--val-fraction must be in [0, 1), got {d.val_fraction}")
    for name, value in (("--limit-train", d.limit_train), ("--limit-test", d.limit_test)):
        _check(value is None or value >= 2, f"{name} must be >= 2, got {value}")
    _check(m.width is None or m.width >= 1, f"--width must be >= 1, got {m.width}")
    _check(m.exit_every is None or m.exit_every >= 1, f"--exit-every must be >= 1, got {m.exit_every}")
    _check(o.epochs >= 1, f"--epochs must be >= 1, got {o.epochs}")
    _check(o.batch_size is None or o.batch_size >= 1, f"--batch-size must be >= 1, got {o.batch_size}")
    _check(o.optimizer in ("auto", "sgd", "adam"), f"--optimizer must be auto, sgd or adam, got {o.optimizer!r}")
    _check(o.lr is None or o.lr > 0, f"--lr must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, f"--weight-decay must be >= 0, got {o.weight_decay}")
    _check(0 <= o.momentum < 1, f"--momentum must be in [0, 1), got {o.momentum}")
    _check(o.schedule in ("cosine", "step", "none"), f"--schedule must be cosine, step or none, got {o.schedule!r}")
    _check(me.alpha is None or me.alpha >= 0, f"--alpha must be >= 0, got {me.alpha}")
    _check(me.dominance >= 1, f"--dominance must be >= 1, got {me.dominance}")
    for name, value in (("--v-lr", me.v_lr), ("--s-lr", me.s_lr), ("--s-init", me.s_init),
                        ("--weight-lr", me.weight_lr), ("--dwa-temperature", me.dwa_temperature)):
        _check(value > 0, f"{name} must be > 0, got {value}")
    _check(0 <= me.ema < 1, f"--ema must be in [0, 1), got {me.ema}")
    _check(0 <= me.phase_switch <= 1, f"--phase-switch must be in [0, 1], got {me.phase_switch}")
    _check(me.period_steps is None or me.period_steps >= 1, f"--period-steps must be >= 1, got {me.period_steps}")
    _check(me.metagf_mode in ("layer", "channel"), f"--metagf-mode must be layer or channel, got {me.metagf_mode!r}")
    _check(me.cagrad_c >= 0, f"--cagrad-c must be >= 0, got {me.cagrad_c}")
    _check(me.gradnorm_alpha >= 0, f"--gradnorm-alpha must be >= 0, got {me.gradnorm_alpha}")
    _check(r.threads is None or r.threads >= 1, f"--threads must be >= 1, got {r.threads}")
    _check(r.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {r.eval_batch_size}")
    _check(bool(r.out), "--out must name a directory")
