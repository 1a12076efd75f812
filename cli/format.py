"""Human-readable tables and lines for the terminal."""

from __future__ import annotations

from typing import Any


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def summary_text(result: dict[str, Any] | None) -> str:
    """``mean_top1 0.8123`` / ``delta_m +3.21%`` of an evaluation result."""
    if not result:
        return "-"
    summary = result.get("summary", {})
    parts = []
    if "mean_top1" in summary:
        parts.append(f"mean_top1 {summary['mean_top1']:.4f}")
    if "delta_m" in summary:
        parts.append(f"delta_m {summary['delta_m']:+.2f}%")
    if not parts:
        parts = [f"loss {sum(m['loss'] for m in result['tasks'].values()):.4f}"]
    return " ".join(parts)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """One line per finished epoch."""
    train = row.get("train", {})
    losses = [v for k, v in train.items() if not k.startswith(("meta", "fusion", "w_", "weight"))]
    loss = f"train loss {sum(losses) / max(len(losses), 1):.4f}" if losses else ""
    return (f"epoch {row['epoch']}/{epochs}  {row['train_s']:.1f}s  {loss}  "
            f"val {summary_text(row.get('val'))}  test {summary_text(row.get('test'))}")


def metrics_table(result: dict[str, Any]) -> str:
    """Tasks as rows, metrics as columns."""
    tasks = result["tasks"]
    metrics: list[str] = []
    for values in tasks.values():
        metrics += [m for m in values if m not in metrics]
    rows = [[name] + [values.get(m, "") for m in metrics] for name, values in tasks.items()]
    return table(["task"] + metrics, rows)
