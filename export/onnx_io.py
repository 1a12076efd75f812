"""ONNX export with the dynamo exporter, checks, and parity against PyTorch (PITFALLS.md: ONNX)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drmgf.errors import ConfigError, UserError
from drmgf.utils import default_permissions

log = logging.getLogger(__name__)
MIN_OPSET = 18
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"


class TupleOutputs(nn.Module):
    """Returns a multi-output model's dict as a tuple in a fixed order (exporters want tuples)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[n] for n in self.names)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The exporter's libraries log harmless translation notes at WARNING; keep the CLI output clean."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset must be {MIN_OPSET} or newer (the dynamo exporter emits 18+), got {opset}")


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, output_names: list[str], opset: int) -> None:
    """Write a single-file ONNX graph with a dynamic batch axis, atomically, and check it.

    Args:
        module: returns a tensor or a tuple of tensors (eval mode).
        example: [B >= 2, C, H, W]; a batch of 1 could freeze the batch dimension.
        path: destination ``.onnx``.
        output_names: one name per output.
        opset: ONNX opset (>= 18).
    """
    import onnx

    check_opset(opset)
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as chatter, _quiet_loggers():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), tmp, dynamo=True, external_data=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=output_names, dynamic_shapes=({0: batch},))
        log.debug("exporter said: %s", chatter.getvalue())
        model = onnx.load(tmp)
        onnx.checker.check_model(model)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if not dims[0].dim_param:
            raise RuntimeError(f"{path.name}: the batch axis was frozen at {dims[0].dim_value}")
        default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def session(path: Path, threads: int = 1) -> object:
    """An onnxruntime CPU session with a fixed thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise UserError(f"{path} is not a loadable ONNX graph: {str(exc).splitlines()[0][:200]}") from None


@torch.no_grad()
def parity(path: Path, module: nn.Module, inputs: list[torch.Tensor]) -> float:
    """Max |onnxruntime - PyTorch| over all outputs and all input batches."""
    sess = session(path)
    worst = 0.0
    for x in inputs:
        expected = module.eval()(x)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, {INPUT_NAME: x.numpy()})  # type: ignore[attr-defined]
        for e, g in zip(expected, got):
            worst = max(worst, float(np.abs(e.numpy() - g).max()))
    return worst
