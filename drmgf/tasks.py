"""Task descriptions shared by data, models, losses, metrics and the exporter."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("classification", "segmentation", "depth", "normal")


@dataclass(frozen=True)
class TaskSpec:
    """One output of a multi-output network.

    Attributes:
        name: output name, the key of the model's output dict (``"shape"``, ``"exit0"``, ...).
        kind: one of ``classification``, ``segmentation``, ``depth``, ``normal``.
        num_classes: classes for classification/segmentation, 0 for dense regression.
        target: the dataset label this output learns; differs from ``name`` for multi-exit
            nets, where every exit predicts the same label.
    """

    name: str
    kind: str
    num_classes: int = 0
    target: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        if not self.target:
            object.__setattr__(self, "target", self.name)

    @property
    def out_channels(self) -> int:
        """Channels of the model output for this task."""
        return {"depth": 1, "normal": 3}.get(self.kind, self.num_classes)

    def as_target(self, name: str) -> TaskSpec:
        """The same prediction problem under another output name (multi-exit)."""
        return TaskSpec(name=name, kind=self.kind, num_classes=self.num_classes, target=self.target)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "target": self.target}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TaskSpec:
        return cls(
            name=str(data["name"]), kind=str(data["kind"]),
            num_classes=int(data.get("num_classes", 0)), target=str(data.get("target", "")),  # type: ignore[arg-type]
        )
