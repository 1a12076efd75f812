"""Cost of one DR-MGF period against one joint-training epoch, measured side by side.

DR-MGF needs T task passes plus one fusion pass per period, so the ideal ratio is T + 1; the rest
(routes, importance updates, task-model copies, fusion arithmetic) is overhead. Prints
``ratio/(T+1)``; the project's target is <= 1.10.

    .venv/bin/python bench/train_cost.py [--repeats 3] [--limit-train 2048] [--width 16] [--phase 1|2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from drmgf.config import TrainConfig
from drmgf.data import load_dataset
from drmgf.train.loop import Trainer, assemble


def trainer_for(method: str, args: argparse.Namespace, data, out: str) -> Trainer:
    cfg = TrainConfig().replace(
        data={"dataset": args.dataset, "limit_train": args.limit_train, "limit_test": 64},
        model={"model": args.model, "width": args.width, "depth": args.depth},
        optim={"epochs": 2, "batch_size": args.batch_size},
        # phase_switch 1.0 keeps routes on (phase 1) in epoch 0; 0.0 measures phase 2.
        method={"method": method, "phase_switch": 1.0 if args.phase == 1 else 0.0},
        run={"out": out, "seed": 0},
    )
    return Trainer(assemble(cfg, data=data))


def time_epoch(trainer: Trainer) -> float:
    started = time.perf_counter()
    trainer.method.train_epoch(trainer.ctx, 0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--model", default="resnet_sdn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--limit-train", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phase", type=int, choices=[1, 2], default=1, help="DR-MGF phase to time")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig().replace(data={"dataset": args.dataset, "limit_train": args.limit_train, "limit_test": 64})
    data = load_dataset(base.data)
    with tempfile.TemporaryDirectory() as tmp:
        joint, period = trainer_for("ew", args, data, f"{tmp}/ew"), trainer_for("drmgf", args, data, f"{tmp}/dr")
        time_epoch(joint), time_epoch(period)  # warm-up (allocator, kernels)
        t_joint, t_period = [], []
        for _ in range(args.repeats):  # interleaved so background load hits both alike
            t_joint.append(time_epoch(joint))
            t_period.append(time_epoch(period))
    tasks = len(joint.run.tasks)
    ratio = statistics.median(t_period) / statistics.median(t_joint)
    print(f"model {args.model} width {args.width} depth {args.depth}, {len(data.train)} train images, "
          f"batch {args.batch_size}, T = {tasks} tasks, DR-MGF phase {args.phase}, torch threads {torch.get_num_threads()}")
    print(f"joint epoch     median {statistics.median(t_joint):.3f} s  runs {[round(t, 3) for t in t_joint]}")
    print(f"DR-MGF period   median {statistics.median(t_period):.3f} s  runs {[round(t, 3) for t in t_period]}")
    print(f"ratio {ratio:.3f}  ratio/(T+1) {ratio / (tasks + 1):.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
