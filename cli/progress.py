"""Progress bars on a terminal, silence elsewhere."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A ``ProgressFn`` that draws one tqdm bar per stage when stderr is a TTY."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: Any = None
        self.stage = ""

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        if stage != self.stage or self.bar is None:
            self.close()
            from tqdm import tqdm

            self.bar, self.stage = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True), stage
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.stage = None, ""
