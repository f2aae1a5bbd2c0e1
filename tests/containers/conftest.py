"""The node's Compose stack in real containers, wherever a Docker engine answers (`make engine` starts one).

Without an engine every test here is skipped, and the session's summary says so in one line.
"""

from __future__ import annotations

import shutil

import pytest

from chi_helpers.containers import base_image, engine


@pytest.fixture(scope="session")
def docker_engine(request):
    version = engine.answers()
    compose = engine.compose_version() if version else None
    if not version or not compose:
        why = "no Docker engine answers" if not version else "Compose v2 (`docker compose`) is missing"
        request.config.container_tests_note = f"container tests: not run, {why} here (`make engine` sets one up)"
        pytest.skip(why)
    request.config.container_tests_note = f"container tests: ran against Docker engine {version} with Compose {compose}"
    return version


@pytest.fixture(scope="session")
def ci_base(docker_engine) -> str:
    """What the images build on: the base made here (made now if it can be), else the production one,
    for an engine that can pull it (a laptop)."""
    if base_image.exists(base_image.BASE_IMAGE) or shutil.which("mmdebstrap"):
        base_image.make()  # ~30 s when missing; `make engine` makes it ahead
        return base_image.BASE_IMAGE
    return base_image.PRODUCTION_BASE
