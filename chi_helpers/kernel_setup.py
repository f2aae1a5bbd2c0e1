"""What every notebook's setup cell does: this copy's helpers importable, and what the kernel lacks installed.

A student's kernel on Chameleon's JupyterHub has Jupyter, ipywidgets and python-chi, not this
project; the node's Jupyter image has PyTorch, Lightning and MLflow. The setup cell puts the copy
of the series that holds the notebook on `sys.path` and calls `prepare`, which:

- installs, with this kernel's own pip, only the packages the kernel cannot import (never an
  upgrade: a working python-chi on the hub, or the image's GPU build of PyTorch, stays as it is);
- makes `!python` in a cell this kernel's Python, and `!python -m chi_helpers ...` and the training
  scripts find this copy's helpers (PATH and PYTHONPATH, inherited by every command a cell starts).

Nothing needs a kernel restart: a freshly installed package is importable at once. A second run
finds everything and returns in milliseconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import subprocess
import sys
import time
from pathlib import Path

# The pip requirement that provides each importable name. Versions agree with requirements.txt and
# the Dockerfiles (the tests check): the MLflow client must match the server.
PROVIDERS = {
    "chi": "python-chi==1.2.10",
    "blazarclient": "chameleon-blazarclient==3.6.5",  # Chameleon's Blazar client, which python-chi is written against
    "PIL": "pillow>=10",
    "psutil": "psutil>=5.9",
    "mlflow": "mlflow==3.17.2",
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "lightning": "lightning>=2.5,<3",
}

# What a kernel must import, by where the notebook runs and on which target.
NEEDS = {
    ("testbed", "chameleon"): ["chi", "blazarclient"],
    ("testbed", "local"): ["PIL", "psutil", "mlflow"],  # the small data set and a local MLflow server
    ("node", "chameleon"): ["PIL", "psutil", "mlflow", "torch", "torchvision", "lightning"],
    ("node", "local"): ["PIL", "psutil", "mlflow", "torch", "torchvision", "lightning"],
}

SERIES_ROOT = Path(__file__).resolve().parent.parent
# Built by the GPU's vendor into the node's image: installed by this cell only where no GPU build exists.
VENDOR_BUILT = ("torch", "torchvision")


class SetupError(RuntimeError):
    """The kernel could not be prepared; the message says what to do."""


def missing(names: list[str]) -> list[str]:
    """The names this kernel cannot import. Looks only: nothing is imported (python-chi reads its
    settings at its first import, which must come after the credentials are loaded)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def _prefix_writable() -> bool:
    return os.access(sys.prefix, os.W_OK) and os.access(site.getsitepackages()[0], os.W_OK)


def install(requirements: list[str], say=print) -> None:
    """pip-install `requirements` into this kernel's environment, a progress line every few seconds."""
    command = [sys.executable, "-m", "pip", "install", "--progress-bar", "off", *requirements]
    in_venv = sys.prefix != sys.base_prefix
    if not in_venv and not _prefix_writable():
        command.insert(4, "--user")  # a system Python the student cannot write to
    start = time.monotonic()
    say(f"installing {', '.join(requirements)} (first run only) ...")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    collected, last = 0, start
    for line in process.stdout:
        lines.append(line.rstrip())
        collected += line.startswith("Collecting ")
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            say(f"  ... {collected} packages collected, {last - start:.0f} s")
    if process.wait() != 0:
        tail = "\n".join(lines[-15:])
        raise SetupError(f"pip could not install {', '.join(requirements)}:\n{tail}\n"
                         "Check the message above; on a machine without Internet access install them by hand.")
    if "--user" in command:
        site.addsitedir(site.getusersitepackages())  # a user site made just now is not on sys.path yet
    importlib.invalidate_caches()
    say(f"installed in {time.monotonic() - start:.0f} s")


def _prepend(variable: str, entry: str) -> None:
    parts = [p for p in os.environ.get(variable, "").split(os.pathsep) if p]
    if not parts or parts[0] != entry:
        os.environ[variable] = os.pathsep.join([entry, *[p for p in parts if p != entry]])


# What a notebook's cells name relative to its own folder, by side: the training scripts one folder up
# from a node-side notebook, the Compose files two folders up from a testbed-side one.
RELATIVE_MARKS = {"node": Path("..") / "train.py", "testbed": Path("..") / ".." / "docker"}


def _go_home(side: str, folder: str, say) -> None:
    """Run from the notebook's own folder in the series when started elsewhere (papermill's --cwd), so
    that `../train.py` and the like mean what the notebook says. A folder that has them is left alone:
    a copy of the scripts elsewhere (the local target's own git repository) is where they run."""
    mark = RELATIVE_MARKS.get(side)
    home = SERIES_ROOT / folder
    if not folder or mark is None or (Path.cwd() / mark).exists() or not home.is_dir():
        return
    say(f"working folder: {home} (the notebook's folder: its cells name files relative to it)")
    os.chdir(home)


def prepare(target: str, side: str = "testbed", folder: str = "", say=print) -> list[str]:
    """Ready this kernel for a notebook of `side` ("testbed" or "node") on `target`, whose place in the
    series is `folder` (e.g. "workspace_mlflow/amd"); returns what it installed."""
    start = time.monotonic()
    _go_home(side, folder, say)
    if (side, target) not in NEEDS:
        # The parameters check right after names the mistake; install nothing for an unknown target.
        needs: list[str] = []
    else:
        needs = NEEDS[(side, target)]
    if str(SERIES_ROOT) not in sys.path:
        sys.path.insert(0, str(SERIES_ROOT))
    _prepend("PYTHONPATH", str(SERIES_ROOT))  # `!python -m chi_helpers`, the training scripts
    _prepend("PATH", str(Path(sys.executable).parent))  # `!python` is this kernel's Python
    absent = missing(needs)
    vendor = [name for name in VENDOR_BUILT if name in absent]
    if side == "node" and target == "chameleon" and vendor:
        # PyPI's build would replace the GPU vendor's (ROCm's, or NVIDIA's matched to the image's CUDA).
        raise SetupError(f"{', '.join(vendor)} cannot be imported in this kernel. On the node they come with the "
                         "Jupyter image (docker/Dockerfile.jupyter-mlflow-*), built for its GPUs; installing "
                         "PyPI's build here would replace that. Open this notebook in the jupyter-mlflow "
                         "container that notebook 04 starts, with its Python 3 kernel.")
    if absent:
        install([PROVIDERS[name] for name in absent], say=say)
        still = missing(absent)
        if still:
            raise SetupError(f"{', '.join(still)} still cannot be imported after installing: restart the kernel "
                             "and run this cell again")
    say(f"series at {SERIES_ROOT}, Python {sys.executable}: "
        f"{'installed ' + ', '.join(absent) if absent else 'nothing to install'} ({time.monotonic() - start:.1f} s)")
    return absent
