"""The base image the CI builds start from, made here: no registry can be reached from these machines.

`mmdebstrap` puts a minimal Debian bookworm with Python and pip into a tarball, and `docker import`
makes it an image. It stands in for `python:3.11-slim-bookworm`: `python` and `pip` on PATH, and pip
may install into the system Python (Debian's "externally managed" marker removed, as the official
image has no such marker). The machine's extra CA certificates are copied in at build time, so pip
and apt inside a `docker build` trust what this machine trusts; they live only in the local image.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from chi_helpers.local import processes
from chi_helpers.progress import Clock

BASE_IMAGE = "mlflow-ci/python:bookworm"
PRODUCTION_BASE = "docker.io/library/python:3.11.9-slim-bookworm"  # what it stands in for (the server's Dockerfile default)
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
PACKAGES = ("ca-certificates", "python3", "python3-pip", "python3-venv")


class BaseImageError(RuntimeError):
    """The base image could not be made; the message says why."""


def exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def mmdebstrap_command(tarball: Path, ca_files: list[Path]) -> list[str]:
    hooks = []
    if ca_files:
        hooks.append("--customize-hook=copy-in " + " ".join(str(f) for f in ca_files) + " /usr/local/share/ca-certificates/")
        hooks.append('--customize-hook=chroot "$1" update-ca-certificates')
    hooks += [
        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED; ln -sf python3 "$1"/usr/bin/python',
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',  # as slim images ship: no indexes
    ]
    return ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}", *hooks,
            "bookworm", str(tarball), MIRROR]


def make(image: str = BASE_IMAGE, clock: Clock | None = None) -> bool:
    """Make the base image unless it exists; True when it was made now."""
    clock = clock or Clock()
    if exists(image):
        clock.say(f"base image {image} exists: reusing it")
        return False
    ca_files = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    with tempfile.TemporaryDirectory(prefix="base-image-") as scratch:
        tarball = Path(scratch) / "rootfs.tar"
        clock.say(f"mmdebstrap: Debian bookworm with {', '.join(PACKAGES)} from {MIRROR} "
                  f"({len(ca_files)} extra CA certificate(s) of this machine) ...")
        done = subprocess.run(mmdebstrap_command(tarball, ca_files), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BaseImageError(f"mmdebstrap failed:\n{processes.tail_text(done.stdout + done.stderr)}")
        clock.say(f"docker import {tarball.stat().st_size / 1e6:.0f} MB as {image} ...")
        done = subprocess.run(["docker", "import", "--change", 'CMD ["python3"]', "--change", "ENV LANG=C.UTF-8",
                               str(tarball), image], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise BaseImageError(f"docker import failed:\n{processes.tail_text(done.stdout + done.stderr)}")
    clock.say(f"base image {image} made")
    return True
