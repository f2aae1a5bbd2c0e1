"""Finding an engine: what `make test` decides from, and what `make engine` would run to make the base."""

from __future__ import annotations

import os
import stat

from chi_helpers.containers import base_image, engine


def fake_docker(tmp_path, script: str):
    path = tmp_path / "docker"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_no_docker_command_means_no_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert engine.answers() is None and engine.compose_version() is None


def test_a_client_without_a_daemon_is_no_engine(tmp_path, monkeypatch):
    # As on these machines: the client is there, `docker info` cannot reach a daemon.
    monkeypatch.setenv("PATH", fake_docker(tmp_path, 'echo "Cannot connect to the Docker daemon" >&2; exit 1\n'))
    assert engine.answers() is None


def test_a_daemon_that_answers_and_compose_v1_only(tmp_path, monkeypatch):
    script = ('case "$1" in info) echo 27.3.1;; compose) echo "docker: \'compose\' is not a docker command." >&2; '
              'exit 1;; esac\n')
    monkeypatch.setenv("PATH", fake_docker(tmp_path, script) + os.pathsep + "/usr/bin:/bin")
    assert engine.answers() == "27.3.1" and engine.compose_version() is None


def test_the_base_image_recipe_carries_the_machines_ca_certificates(tmp_path):
    ca = tmp_path / "extra.crt"
    command = base_image.mmdebstrap_command(tmp_path / "rootfs.tar", [ca])
    assert command[:3] == ["mmdebstrap", "--quiet", "--variant=minbase"]
    assert f"--customize-hook=copy-in {ca} /usr/local/share/ca-certificates/" in command
    assert '--customize-hook=chroot "$1" update-ca-certificates' in command
    assert any("EXTERNALLY-MANAGED" in word and "/usr/bin/python" in word for word in command)
    assert command[-3:] == ["bookworm", str(tmp_path / "rootfs.tar"), base_image.MIRROR]
    assert not any("copy-in" in word for word in base_image.mmdebstrap_command(tmp_path / "r.tar", []))
