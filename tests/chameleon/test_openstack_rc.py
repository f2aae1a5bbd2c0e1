"""Headless credentials from an OpenStack RC file."""

from __future__ import annotations

import pytest

from chi_helpers.chameleon import openstack_rc

APP_CREDENTIAL = """#!/usr/bin/env bash
export OS_AUTH_TYPE=v3applicationcredential
export OS_AUTH_URL=https://chi.tacc.chameleoncloud.org:5000/v3
export OS_IDENTITY_API_VERSION=3
export OS_REGION_NAME="CHI@TACC"
export OS_INTERFACE=public
export OS_APPLICATION_CREDENTIAL_ID=abc123
export OS_APPLICATION_CREDENTIAL_SECRET='s3cr3t with spaces'
"""

PROMPTING = """export OS_AUTH_URL=https://kvm.tacc.chameleoncloud.org:5000/v3
export OS_USERNAME="student@example.edu"
echo "Please enter your Chameleon password: "
read -sr OS_PASSWORD_INPUT
export OS_PASSWORD=$OS_PASSWORD_INPUT
"""


def test_an_application_credential_file_fills_the_environment(tmp_path, monkeypatch):
    for key in ("OS_AUTH_URL", "OS_REGION_NAME", "OS_APPLICATION_CREDENTIAL_SECRET"):
        monkeypatch.delenv(key, raising=False)
    rc = tmp_path / "app-cred-openrc.sh"
    rc.write_text(APP_CREDENTIAL)
    names = openstack_rc.load(rc)
    import os
    assert "OS_APPLICATION_CREDENTIAL_SECRET" in names
    assert os.environ["OS_REGION_NAME"] == "CHI@TACC"
    assert os.environ["OS_APPLICATION_CREDENTIAL_SECRET"] == "s3cr3t with spaces"


def test_a_prompting_file_needs_the_password_already_set(tmp_path, monkeypatch):
    rc = tmp_path / "openrc.sh"
    rc.write_text(PROMPTING)
    monkeypatch.delenv("OS_PASSWORD", raising=False)
    monkeypatch.delenv("OS_USERNAME", raising=False)
    with pytest.raises(ValueError, match="asks for OS_PASSWORD interactively"):
        openstack_rc.load(rc)
    monkeypatch.setenv("OS_PASSWORD", "typed-earlier")
    assert "OS_PASSWORD" not in openstack_rc.load(rc)
    import os
    assert os.environ["OS_PASSWORD"] == "typed-earlier" and os.environ["OS_USERNAME"] == "student@example.edu"


def test_wrong_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no OpenStack RC file"):
        openstack_rc.load(tmp_path / "missing.sh")
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="sets no OS_AUTH_URL"):
        openstack_rc.load(tmp_path / "notes.txt")
