"""Waiting on the node for what runs in the background: the Jupyter image build that notebook 02 starts,
and the Jupyter server in its container, until it lists its access token.

Each wait prints a line per look, with the time waited, and gives up after a time limit with what it
saw and what to do. The looks run over python-chi's SSH connection with their output hidden.
"""

from __future__ import annotations

import time

from chi_helpers.chameleon import node_stack
from chi_helpers.chameleon.node_setup import BUILD_LOG, BUILD_STATUS, IMAGE, IMAGE_STATE


class ImageNotReady(RuntimeError):
    """The Jupyter image is not there to run; the message says why and what to do."""


def _quiet(node, command: str) -> str:
    """A command's output, not shown (a poll): python-chi's connection, as `execute` opens it."""
    with node.ssh_connection() as connection:
        return connection.run(command, hide=True, warn=True, in_stream=False).stdout


def wait_for_image(node, timeout_minutes: float, poll_seconds: float = 30, say=print, sleep=None) -> None:
    """Wait until the image notebook 02 started building exists, a line per look with the time waited
    and the build's last log line. A failed build, one that never started, or one still running after
    `timeout_minutes` raises ImageNotReady with the end of its log and what to do."""
    sleep = sleep or time.sleep
    start = time.monotonic()
    while True:
        state, _, last = _quiet(node, IMAGE_STATE).strip().partition("\n")
        waited = time.monotonic() - start
        if state == "built":
            say(f"[{waited:6.0f}s] {IMAGE} is built")
            return
        if state != "building":
            log = _quiet(node, f"tail -n 20 {BUILD_LOG} 2>/dev/null").rstrip()
            if state == "missing":
                raise ImageNotReady(f"the {IMAGE} image was never built on this node (no build has run): run the "
                                    "setup in notebook 02 again, which starts it")
            raise ImageNotReady(f"the {IMAGE} image build failed (exit status {state}). The end of its log "
                                f"({BUILD_LOG} on the node):\n{log}\nFix what it says, then run the setup in "
                                "notebook 02 again: it starts the build anew.")
        if waited >= timeout_minutes * 60:
            log = _quiet(node, f"tail -n 20 {BUILD_LOG} 2>/dev/null").rstrip()
            raise ImageNotReady(f"the {IMAGE} image is still building after {timeout_minutes:.0f} min of waiting. "
                                f"The end of its log ({BUILD_LOG} on the node):\n{log}\nIf the log still moves, "
                                "run this cell again to keep waiting; if it has stopped for many minutes, delete "
                                f"{BUILD_STATUS} on the node and run the setup in notebook 02 again.")
        say(f"[{waited:6.0f}s] {IMAGE} still building: {last.strip()[:120] or '(its log is empty so far)'}")
        sleep(poll_seconds)


class JupyterNotReady(RuntimeError):
    """The node's Jupyter server lists no token in time; the message says what to do."""


def wait_for_jupyter(node, address: str, variant: str, timeout_seconds: float = 120, poll_seconds: float = 3,
                     say=print, sleep=None) -> str:
    """The address to open notebook 05 in the node's Jupyter, once the server lists its token (it is not
    there a second after `docker run -d`: the server takes a few seconds to start)."""
    sleep = sleep or time.sleep
    start = time.monotonic()
    while True:
        listing = _quiet(node, node_stack.jupyter_url_command())
        url = node_stack.jupyter_url(listing, address, variant)
        waited = time.monotonic() - start
        if url:
            return url
        if waited >= timeout_seconds:
            logs = _quiet(node, "docker logs --tail 20 jupyter 2>&1").rstrip()
            raise JupyterNotReady(f"the Jupyter server in the container lists no token after {timeout_seconds:.0f} s. "
                                  f"The end of its log:\n{logs}\nRun this cell again; if the container has stopped "
                                  "(`docker ps` on the node shows no jupyter), run the cell that starts it again.")
        say(f"[{waited:6.0f}s] the Jupyter server is starting ...")
        sleep(poll_seconds)
