"""``drmgf routes RUN_DIR``: routes for a trained run, saved as routes.json and routes.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drmgf.errors import ConfigError
from drmgf.export.exporter import prepare, sample_inputs
from drmgf.export.routes import RouteRule, compute_routes, routes_document
from drmgf.utils import atomic_write_json


def routes_for_run(run_dir: str | Path, rule: RouteRule, *, checkpoint: str = "checkpoint.pt",
                   out: str | Path | None = None, plot: bool = True) -> dict[str, Any]:
    """Compute, save (``RUN_DIR/routes.json`` unless ``out``) and draw the routes of every task."""
    rule.validate()
    run_dir = Path(run_dir)
    run, ckpt, nets = prepare(run_dir, None, checkpoint)
    importance = scale = None
    if rule.score == "importance":
        method = ckpt["config"]["method"]["method"]
        if method != "drmgf":
            raise ConfigError(f"--score importance needs a drmgf run; {run_dir} was trained with --method {method}: "
                              "use --score magnitude")
        from drmgf.methods.drmgf import variables_from_state

        variables = variables_from_state(ckpt["method"])
        importance, scale = variables["importance"], variables["scale"]
    routes = compute_routes(run.model, nets, rule, sample_inputs(run, 1), importance, scale)
    info = {"run": str(run_dir), "checkpoint": checkpoint, "epoch": int(ckpt["epoch"]),
            "method": ckpt["config"]["method"]["method"], "input_shape": list(run.data.input_shape)}
    document = routes_document(routes, rule, info)
    path = Path(out) if out else run_dir / "routes.json"
    atomic_write_json(path, document)
    if plot:
        from drmgf.export.plots import routes_figure

        routes_figure(document, path.with_suffix(".png"))
    return document
