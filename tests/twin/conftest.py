"""The twin for tests: started in this process on its own loopback address, python-chi pointed at it,
and this process guarded so that nothing can reach an address outside 127.0.0.0/8."""

from __future__ import annotations

import os

import pytest

from chi_helpers.twin import control, guard


@pytest.fixture(scope="session", autouse=True)
def network_guard():
    guard.install()


@pytest.fixture
def twin(tmp_path):
    started = control.start(tmp_path / "twin", speed=600, nodes=False)  # ten minutes a second
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
