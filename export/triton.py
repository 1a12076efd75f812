"""A Triton Inference Server model repository for the exported graphs (onnxruntime backend)."""

from __future__ import annotations

import shutil
from pathlib import Path

from drmgf.utils import atomic_write_text

MAX_BATCH = 64


def model_config(name: str, input_name: str, input_dims: list[int], outputs: dict[str, list[int]],
                 max_batch_size: int = MAX_BATCH) -> str:
    """``config.pbtxt`` text for one ONNX model with dynamic batching.

    Args:
        name: Triton model name (the folder name).
        input_dims, outputs: per-sample shapes (no batch axis).
    """
    def dims(shape: list[int]) -> str:
        return ", ".join(str(d) for d in shape)

    outs = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {dims(s)} ] }}' for n, s in outputs.items())
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f'input [\n  {{ name: "{input_name}" data_type: TYPE_FP32 dims: [ {dims(input_dims)} ] }}\n]\n'
            f"output [\n{outs}\n]\ndynamic_batching {{ max_queue_delay_microseconds: 100 }}\n")


def write_model(repo: Path, name: str, onnx_path: Path, config: str) -> None:
    """``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.onnx``."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version / "model.onnx")
    atomic_write_text(repo / name / "config.pbtxt", config)
