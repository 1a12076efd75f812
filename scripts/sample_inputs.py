"""Write the first N test images of a run as .npy files (raw pixels, as a user would have them).

    python scripts/sample_inputs.py RUN_DIR OUT_DIR N
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from drmgf.train import load_run


def main() -> None:
    run_dir, out_dir, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    run, _ = load_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = run.data.test.images[i].permute(1, 2, 0).numpy()  # HxWxC, as image files are
        np.save(out_dir / f"test{i}.npy", np.ascontiguousarray(image))
        labels = {k: int(v[i]) for k, v in run.data.test.targets.items() if v.dim() == 1}
        print(f"{out_dir / f'test{i}.npy'}: {labels}")


if __name__ == "__main__":
    main()
