"""Kernels for headless runs that talk over local sockets, so ipykernel has no warning to print.

ipykernel 7 warns "Kernel is running over TCP without encryption" whenever its ports are TCP, which
they are by default even on 127.0.0.1. With jupyter_client's `ipc` transport the kernel's channels
are Unix sockets in a private folder: nothing to warn about, and nothing reachable from the network.
The socket files live in one temporary folder per process, removed at exit, never next to a notebook.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

_socket_dir: Path | None = None


def socket_dir() -> Path:
    global _socket_dir
    if _socket_dir is None:
        _socket_dir = Path(tempfile.mkdtemp(prefix="chi-series-kernels-"))
        atexit.register(shutil.rmtree, _socket_dir, True)
    return _socket_dir


class QuietKernelManager(AsyncKernelManager):
    """What papermill starts each notebook's kernel with (`kernel_manager_class=`)."""

    @default("transport")
    def _default_transport(self):
        return "ipc"

    @default("ip")
    def _default_ip(self):
        # With ipc, "ip" is the path prefix of the socket files; each kernel adds its own suffix.
        return str(socket_dir() / "kernel")
