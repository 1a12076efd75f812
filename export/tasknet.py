"""The network one task deploys, and the names that tie it to the full model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from drmgf.errors import UserError
from drmgf.methods.sharing import Sharing


@dataclass
class TaskNet:
    """One task's sub-network of a trained model.

    Attributes:
        task: output name.
        module: returns the task's output tensor; shares parameters with the full model.
        names: id(conv) -> the conv's module name in the full model, for every conv of ``module``.
        route_layers: names of the shared convs this task reaches (its route's layers), model order.
        couplings: pairs of conv names tied outside autograd (e.g. pool indices).
    """

    task: str
    module: nn.Module
    names: dict[int, str]
    route_layers: list[str]
    couplings: list[tuple[str, str]]


def conv_names(model: nn.Module) -> dict[int, str]:
    """id(conv) -> module name for every Conv2d of ``model``."""
    return {id(m): n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def task_nets(model: nn.Module, sharing: Sharing) -> dict[str, TaskNet]:
    """The deployable network of every task of ``model`` (which must define ``task_module``)."""
    if not hasattr(model, "task_module"):
        raise UserError(f"{type(model).__name__} has no task_module(name): export needs each task's own "
                        "sub-network (registered models provide it)")
    full = conv_names(model)
    by_name = {n: m for n, m in model.named_modules()}
    couplings = [(full[id(a)], full[id(b)]) for a, b in getattr(model, "channel_couplings", lambda: [])()]
    nets = {}
    for task in sharing.tasks:
        module = model.task_module(task)
        names = {id(m): full[id(m)] for m in module.modules() if id(m) in full}
        route = [n for n in full.values() if id(by_name[n]) in names and len(sharing.reach.get(f"{n}.weight", ())) > 1
                 and task in sharing.reach[f"{n}.weight"]]
        nets[task] = TaskNet(task, module, names, route, couplings)
    return nets


def copy_with_names(net: TaskNet) -> tuple[nn.Module, dict[int, str]]:
    """A deep copy of ``net.module`` (eval mode, grads on) and id(conv in copy) -> full name."""
    import copy

    clone = copy.deepcopy(net.module).eval()
    names = {}
    for (_, orig), (_, new) in zip(net.module.named_modules(remove_duplicate=False),
                                   clone.named_modules(remove_duplicate=False)):
        if id(orig) in net.names:
            names[id(new)] = net.names[id(orig)]
    for p in clone.parameters():
        p.requires_grad_(True)  # torch-pruning traces through autograd
    return clone, names


def count_macs_params(module: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward of ``example`` (batch 1 recommended)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)
