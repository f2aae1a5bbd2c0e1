"""Chameleon's JupyterHub as a student's server has it, for the tests that run notebooks there.

- **The kernel's Python** has only what the hub has: Jupyter's kernel, ipywidgets, python-chi with
  Chameleon's Blazar client (SPEC: "Chameleon's JupyterHub and Trovi"), built once into
  ~/.cache/chi-series from the wheels `make install` keeps (tests/series/hub-kernel.txt), never from a
  package index.
- **Its limits** (ChameleonCloud/jupyterhub-kubernetes `config/jupyterhub_config.yaml`: `singleuser.storage`
  `capacity: 512M` mounted at `/work`, `memory.limit: 1G`, `cpu.limit: .49`): a 512 MB ext4 file system
  on a loop device stands for the work volume, and the kernel joins a cgroup with 1 GiB of memory and
  49 ms of CPU per 100 ms. The hub's own server shares the pod's gigabyte on Chameleon; here the
  kernel has it to itself, and `peak_memory` tells how close it came.
- **Its clock** follows the twin's (libfaketime reading the twin's clock offset file), so a test can
  compress a three-hour session: python-chi in the kernel sees the same time as the hub and Keycloak.

Limits need root, a cgroup file system and loop devices (this workplace's machines have them); where
they cannot be had, `HubLimits.make` raises `Unavailable` with the reason, and the tests that need them
are skipped with it in the summary.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chi_helpers.series import REPO_ROOT

# What Chameleon's JupyterHub kernel has.
HUB_PACKAGES = ["python-chi==1.2.10", "chameleon-blazarclient==3.6.5", "ipykernel>=6.29", "ipywidgets>=8"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chi-series"
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"  # made by `make install` from tests/series/hub-kernel.txt
OFFLINE = ["--no-index", "--find-links", str(WHEELHOUSE)]
WORK_BYTES = 512 * 10**6  # "512M" in Kubernetes' units
MEMORY_BYTES = 1 << 30  # "1G"
CPU_QUOTA_US, CPU_PERIOD_US = 49_000, 100_000  # ".49"
FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"


class Unavailable(RuntimeError):
    """This machine cannot give a kernel the hub's limits (or its clock); the message says why."""


def base_environment() -> Path:
    """The hub's packages in a virtual environment, built once per set of packages."""
    if not WHEELHOUSE.is_dir():
        raise Unavailable(f"no wheels at {WHEELHOUSE}: run `make install` (it keeps the hub kernel's wheels there)")
    key = hashlib.sha256(json.dumps([sys.version, HUB_PACKAGES]).encode()).hexdigest()[:12]
    base = CACHE / f"hub-kernel-{key}"
    if (base / ".complete").exists():
        return base
    building = CACHE / f"hub-kernel-{key}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", *OFFLINE, *HUB_PACKAGES],
                   check=True, timeout=900)
    (building / ".complete").touch()
    shutil.rmtree(base, ignore_errors=True)
    building.rename(base)
    # A venv's scripts name its folder; `python -m ...` (all the tests use) does not care.
    return base


def fresh_copy(destination: Path) -> Path:
    """The repository's files (tracked and new, not ignored) in `destination`, as Trovi checks them out."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    return destination


def libfaketime(install: bool = True) -> str:
    """libfaketime's library, installed with Debian's `faketime` package when missing (as root)."""
    found = sorted(glob.glob(FAKETIME_GLOB))
    if found:
        return found[0]
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("libfaketime is not installed (Debian: `apt-get install faketime`)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "faketime"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed: {(done.stdout + done.stderr)[-500:]}")
    return libfaketime(install=False)


def clock_environment(offset_file: Path) -> dict[str, str]:
    """A process whose clocks run `offset_file`'s seconds ahead, read anew at every look. Its monotonic clock
    moves too: with FAKETIME_DONT_FAKE_MONOTONIC an ipykernel never answers an execute request (seen here
    with libfaketime 0.9.10), so the tests move the clock only while the kernels are idle."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1"}


@dataclass
class HubLimits:
    """A work volume of the hub's size, mounted at `work`, and the cgroup(s) of the hub's memory and CPU."""

    work: Path
    image: Path
    groups: list[Path] = field(default_factory=list)  # each a cgroup folder the kernel joins
    version: int = 1

    @classmethod
    def make(cls, folder: Path) -> "HubLimits":
        if os.geteuid() != 0:
            raise Unavailable("the hub's limits need root here (a loop-mounted volume and a cgroup)")
        for tool in ("mkfs.ext4", "mount", "umount"):
            if not shutil.which(tool):
                raise Unavailable(f"{tool} is missing")
        work, image = folder / "work", folder / "work.img"
        work.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as disk:
            disk.truncate(WORK_BYTES)
        for command in (["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], ["mount", "-o", "loop", str(image), str(work)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                image.unlink(missing_ok=True)
                raise Unavailable(f"{' '.join(command)}: {done.stderr.strip()}")
        limits = cls(work, image)
        try:
            limits._make_groups(f"chi-series-hub-{os.getpid()}-{folder.name}")
        except (OSError, Unavailable) as error:
            limits.remove()
            raise Unavailable(f"no cgroup for the hub's memory and CPU: {error}") from None
        return limits

    def _make_groups(self, name: str) -> None:
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():  # cgroup v2, one tree
            self.version = 2
            group = root / name
            group.mkdir()
            self.groups = [group]
            (group / "memory.max").write_text(str(MEMORY_BYTES))
            (group / "cpu.max").write_text(f"{CPU_QUOTA_US} {CPU_PERIOD_US}")
            return
        memory, cpu = root / "memory", root / "cpu"
        if not (memory / "memory.limit_in_bytes").exists() or not (cpu / "cpu.cfs_quota_us").exists():
            raise Unavailable("neither cgroup v2 nor v1's memory and cpu controllers are mounted")
        self.groups = [memory / name, cpu / name]
        for group in self.groups:
            group.mkdir()
        (memory / name / "memory.limit_in_bytes").write_text(str(MEMORY_BYTES))
        (cpu / name / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / name / "cpu.cfs_quota_us").write_text(str(CPU_QUOTA_US))

    def joining_command(self) -> str:
        """Shell lines that move the shell running them into the hub's cgroup(s)."""
        return "\n".join(f'echo $$ > "{group / "cgroup.procs"}"' for group in self.groups)

    def peak_memory(self) -> int:
        """The most memory the kernels in the group used at once, in bytes."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.groups[0] / name).read_text())
        except (OSError, ValueError):
            return 0

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.work).free

    def remove(self) -> None:
        """Unmount the volume and remove the cgroups (their processes are stopped first)."""
        for group in self.groups:
            procs = group / "cgroup.procs"
            for pid in (procs.read_text().split() if procs.exists() else []):
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        for group in self.groups:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    import time

                    time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.work)], capture_output=True)
        self.image.unlink(missing_ok=True)


def install_kernel(python: Path, jupyter_dir: Path, name: str, limits: HubLimits | None = None,
                   clock_file: Path | None = None) -> None:
    """A Jupyter kernel spec `name` under `jupyter_dir` (a JUPYTER_PATH entry) that runs `python`'s ipykernel,
    inside the hub's limits and on the twin's clock when given."""
    spec = jupyter_dir / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    launcher = spec / "launch.sh"
    launcher.write_text("#!/bin/sh\n# The hub's limits, then the kernel itself.\n"
                        + (limits.joining_command() + "\n" if limits else "")
                        + f'exec "{python}" -m ipykernel_launcher -f "$1"\n')
    launcher.chmod(0o755)
    kernel = {"argv": ["/bin/sh", str(launcher), "{connection_file}"], "display_name": f"Python 3 ({name})",
              "language": "python", "metadata": {"debugger": False},
              "env": clock_environment(clock_file) if clock_file else {}}
    (spec / "kernel.json").write_text(json.dumps(kernel, indent=1))
