"""The network guard the series honours when its credentials ask for one (CHI_SERIES_ALLOWED_NETWORKS),
and the product's independence from its stand-in: `chameleon/` knows nothing of `twin/`.

The refusals are checked on loopback addresses outside a narrow allow-list, so even a broken guard
would send nothing beyond this machine."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chi_helpers import network_guard
from chi_helpers.chameleon import run as chameleon_run

PACKAGE = Path(network_guard.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("folder", ["chameleon", "series", "local"])
def test_the_product_does_not_know_its_stand_in(folder):
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        twin = sorted(m for m in imported_modules(path) if m.startswith("chi_helpers.twin"))
        assert not twin, f"{path.relative_to(PACKAGE.parent)} imports {twin}"


def test_the_twin_rc_file_asks_for_the_guard(twin_rc_text):
    assert f"export {network_guard.VARIABLE}=127.0.0.0/8" in twin_rc_text


@pytest.fixture
def twin_rc_text(tmp_path):
    from chi_helpers.twin import control

    twin = control.start(tmp_path / "twin", nodes=False)
    try:
        yield twin.rc_file.read_text()
    finally:
        twin.stop()


def test_a_run_reads_the_allowed_networks_from_its_rc_file(tmp_path, monkeypatch):
    monkeypatch.delenv(network_guard.VARIABLE, raising=False)
    rc = tmp_path / "openrc.sh"
    rc.write_text("export OS_AUTH_URL=https://chi.tacc.chameleoncloud.org:5000/v3\n")
    assert chameleon_run.allowed_networks(str(rc)) == ""  # Chameleon's own RC: no limit
    rc.write_text(rc.read_text() + f"export {network_guard.VARIABLE}=127.0.0.0/8\n")
    assert chameleon_run.allowed_networks(str(rc)) == "127.0.0.0/8"


@pytest.mark.parametrize("value", ["127.0.0.0/33", "localhost", " , "])
def test_a_bad_allow_list_is_refused_with_the_variable_named(value):
    with pytest.raises(ValueError, match=network_guard.VARIABLE):
        network_guard.parse(value)


CHILD = """
import socket, sys
address, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((address, port), timeout=5).close()
    print("connected")
except ConnectionRefusedError as error:
    print(type(error).__name__, error)
try:
    socket.getaddrinfo("example.org", 443)
    print("resolved")
except ConnectionRefusedError as error:
    print(type(error).__name__)
"""


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


def child(port: int, networks: str) -> str:
    env = network_guard.environment({"PATH": "/usr/bin:/bin"}, networks=networks)
    done = subprocess.run([sys.executable, "-c", CHILD, "127.0.0.1", str(port)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_child_process_outside_its_networks_is_refused_before_connecting(listener):
    port, accepted = listener
    out = child(port, "127.0.0.2/32")  # 127.0.0.1 is not in it
    assert out.splitlines()[0].startswith("BlockedConnection network guard: refused a connection to 127.0.0.1")
    assert out.splitlines()[1] == "BlockedConnection"  # no DNS query either
    assert accepted == []


def test_a_child_process_inside_its_networks_connects(listener):
    port, accepted = listener
    assert child(port, "127.0.0.0/8").splitlines()[0] == "connected"
