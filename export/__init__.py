"""Deployment: explicit routes from learned importance, per-task pruned ONNX graphs, runtime and latency.

Reads ``drmgf`` checkpoints and models; ``drmgf`` itself never imports this package.
"""
