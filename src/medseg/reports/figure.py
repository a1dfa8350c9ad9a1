"""Writing matplotlib figures the house way: Agg backend, atomic file, figure always closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medseg.io.atomic import atomic_path  # noqa: E402


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG through a temp file and rename; close it whatever happens."""
    path = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
