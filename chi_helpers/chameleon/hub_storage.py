"""Bringing an archive from the node into the hub's small volume: only when it fits with room to spare, never half.

A student's JupyterHub storage on Chameleon is 512 MB (jupyterhub-kubernetes `singleuser.storage.capacity`),
and one archive of the course's full-size runs is 200-350 MB. So notebook 08 looks before it copies:

- an archive that does not fit with `SPARE_BYTES` left over is not copied; the message gives the sizes
  and what does fit: the same history without the models no registered version uses (`runs_only`,
  made on the node there and then, so its size is known), a download straight from the node's Jupyter
  (the archive is linked into the series' folder there, which its file browser shows), or room made on
  the hub;
- a copy goes to `<name>.part` and is renamed once whole; a failure on the way (the volume filling up,
  the connection dropping) removes the part, so nothing half-written is ever left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from chi_helpers.chameleon import node_stack

SPARE_BYTES = 50 * 10**6  # left free after the copy: the hub's own notebooks, outputs and installs need room


class NoRoom(RuntimeError):
    """The archive does not fit on the hub; the message gives the sizes and the ways that do."""


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int:
    """Free space where `folder` is (or would be made)."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def copy_to_hub(connection, name: str, folder: str | Path, runs_only: bool, say=print, spare: int = SPARE_BYTES) -> Path:
    """The archive `name` of the node's ~/mlflow-archives, copied into `folder` over SFTP when it fits with
    `spare` bytes left (see the module's notes); `connection` is the node's Fabric connection
    (`my_server.ssh_connection()`)."""
    folder, remote = Path(folder), node_stack.archive_path(name)
    size = connection.sftp().stat(remote).st_size
    free = free_bytes(folder)
    if size + spare > free:
        raise NoRoom(_no_room(connection, name, size, free, runs_only, say))
    folder.mkdir(parents=True, exist_ok=True)
    kept, part = folder / name, folder / f"{name}.part"
    try:
        connection.get(remote, local=str(part))
        if part.stat().st_size != size:
            raise OSError(f"the copy of {name} holds {part.stat().st_size} bytes, not {size}")
        part.replace(kept)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return kept


def _no_room(connection, name: str, size: int, free: int, runs_only: bool, say) -> str:
    lines = [f"the archive {name} is {megabytes(size)}, and this hub has {megabytes(free)} free: with "
             f"{megabytes(SPARE_BYTES)} to spare for your notebooks, it does not fit. Nothing was copied, and "
             "nothing is deleted: the archive stays on the node until the server goes. What fits:"]
    if not runs_only:
        smaller = name.replace(".tar", "-runs-only.tar")
        command = node_stack.archive_command(smaller, runs_only=True)
        say(f"$ {command}")
        connection.run(command, hide=True, in_stream=False)
        small = connection.sftp().stat(node_stack.archive_path(smaller)).st_size
        fits = "fits" if small + SPARE_BYTES <= free else "does not fit either"
        lines.append(f"- runs_only = True in the parameters cell: the same history without the models no registered "
                     f"version uses, {megabytes(small)} ({fits});")
    link = node_stack.download_link_command(name)
    say(f"$ {link}")
    connection.run(link, hide=True, in_stream=False)
    lines.append(f"- straight from the node, to your computer: in the node's Jupyter (notebook 04's address) the file "
                 f"browser shows {name} in the series' folder; right-click it, Download;")
    lines.append("- room on this hub: delete older archives in the archive folder, or other large files (the hub's "
                 "File Browser lists sizes), then run this cell again;")
    lines.append("- Chameleon's object store, in your project (docs/students.md, 'Keeping what is larger than the hub').")
    return "\n".join(lines)
