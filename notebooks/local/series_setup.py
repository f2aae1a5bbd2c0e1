# Written by `python -m chi_helpers build` from series_setup.py at the top of the series: edit that one.
"""What a notebook's setup cell imports: this copy of the series' helpers (chi_helpers) made importable,
then the kernel readied by `chi_helpers.kernel_setup.prepare`.

The notebooks run where the series is not installed (Chameleon's JupyterHub, the node's Jupyter
container). Each notebook folder has a copy of this file, written by `python -m chi_helpers build` from
the one at the top of the series, so `import series_setup` finds it in the folder the kernel starts in.
The series is the nearest folder above the file that holds `chi_helpers/`; where there is none (a copy
of the scripts elsewhere), an installed `chi_helpers` serves.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def series_root() -> Path | None:
    """The copy of the series this file sits in, or None."""
    here = Path(__file__).resolve().parent
    return next((p for p in [here, *here.parents] if (p / "chi_helpers" / "kernel_setup.py").is_file()), None)


def prepare(target: str, side: str = "testbed", folder: str = "") -> list[str]:
    """Make chi_helpers importable, then ready the kernel for a notebook of `side` on `target` whose
    place in the series is `folder`; returns what was installed. Safe to run again."""
    root = series_root()
    if root is not None:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    elif importlib.util.find_spec("chi_helpers") is None:
        raise RuntimeError("chi_helpers is neither in a folder above this notebook nor installed: open the "
                           "notebook from its place in the series (or `pip install -e` the series)")
    from chi_helpers import kernel_setup

    return kernel_setup.prepare(target, side=side, folder=folder)
