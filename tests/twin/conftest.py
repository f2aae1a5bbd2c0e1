"""The twin for tests: started in this process on its own loopback address, python-chi pointed at it,
and this process guarded so that nothing can reach an address outside 127.0.0.0/8."""

from __future__ import annotations

import os

import pytest

import hub_standin
from chi_helpers import network_guard as guard
from chi_helpers.twin import control


@pytest.fixture(scope="session", autouse=True)
def network_guard():
    guard.install()


@pytest.fixture
def twin(tmp_path, request):
    marker = request.node.get_closest_marker("twin_speed")
    speed = marker.args[0] if marker else 600  # ten minutes a second
    started = control.start(tmp_path / "twin", speed=speed, nodes=False)
    yield started
    started.stop()


@pytest.fixture
def chi(twin, monkeypatch):
    """python-chi's context, signed in to the twin with its application credential, at CHI@TACC."""
    import chi.context as context

    for key in list(os.environ):
        if key.startswith("OS_"):
            monkeypatch.delenv(key)
    environment = twin.environment()
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    # python-chi reads CHI_RESOURCE_API_URL once, at its first import.
    monkeypatch.setattr(context, "RESOURCE_API_URL", environment["CHI_RESOURCE_API_URL"])
    context.reset()
    context.use_site("CHI@TACC")
    yield context
    context.reset()


@pytest.fixture
def twin_with_nodes(tmp_path):
    """The twin with an SSH node behind every floating IP bound to an ACTIVE server."""
    # Leases start within seconds and last their three hours: servers live as long as the test needs.
    started = control.start(tmp_path / "twin", speed=600, end_speed=1, nodes=True)
    yield started
    started.stop()


@pytest.fixture
def chi_at_twin(twin, monkeypatch):
    """What loading the RC file before python-chi's first import does in a fresh process. This test
    process imported python-chi already, and it keeps the site list's address from that import."""
    import chi.context
    import chi.hardware

    url = twin.environment()["CHI_RESOURCE_API_URL"]
    monkeypatch.setattr(chi.context, "RESOURCE_API_URL", url)
    monkeypatch.setattr(chi.hardware, "RESOURCE_API_URL", url)


@pytest.fixture
def clean_environment():
    """No OS_* or CHI_* variables at the start; whatever the test loads (an RC file) is undone after."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("OS_", "CHI_RESOURCE")):
            del os.environ[key]
    yield
    os.environ.clear()
    os.environ.update(saved)
    import chi.context

    chi.context.reset()


@pytest.fixture
def member_only_token(twin) -> str:
    """A Keystone token of an application credential made with the `member` role alone (no `reader`)."""
    import requests

    from chi_helpers.twin import keystone

    credential = next(iter(twin.world.data["application_credentials"].values()))
    made = keystone.add_application_credential(twin.world, credential["user_id"], credential["project_id"],
                                               "member-only", unrestricted=True, roles=["member"])
    answer = requests.post(f"{twin.url}/v3/auth/tokens", timeout=5, json={"auth": {"identity": {
        "methods": ["application_credential"], "application_credential": {"id": made["id"], "secret": made["secret"]}}}})
    return answer.headers["X-Subject-Token"]


@pytest.fixture
def faketime(twin, request) -> dict[str, str]:
    """The environment of a process whose clock follows the twin's (libfaketime reading its offset file)."""
    try:
        return hub_standin.clock_environment(twin.world.clock.offset_file)
    except hub_standin.Unavailable as why:
        request.config.hub_tests_note = f"hub session tests: not run, {why}"
        pytest.skip(str(why))
