"""The check before the first python-chi call: sign-in, project and key pair, or what to set."""

from __future__ import annotations

import os

import pytest

from chi_helpers.chameleon import login as chameleon_login
from chi_helpers.chameleon.login import LoginError, check


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("OS_") or key in ("JUPYTERHUB_API_URL", "JPY_SESSION_NAME"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("USER", "student")


def app_credential_rc(tmp_path, **extra) -> str:
    lines = ["export OS_AUTH_TYPE=v3applicationcredential", "export OS_AUTH_URL=http://127.0.0.1:5000/v3",
             "export OS_IDENTITY_API_VERSION=3", "export OS_APPLICATION_CREDENTIAL_ID=abc123",
             "export OS_APPLICATION_CREDENTIAL_SECRET=s3cret"]
    lines += [f"export {k}={v}" for k, v in extra.items()]
    path = tmp_path / "app-cred-openrc.sh"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def key_files(tmp_path) -> tuple[str, str]:
    private, public = tmp_path / "id_rsa", tmp_path / "id_rsa.pub"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    public.write_text("ssh-rsa AAAA student\n")
    return str(private), str(public)


def test_nothing_to_sign_in_with_says_where_credentials_come_from():
    with pytest.raises(LoginError) as error:
        check()
    assert "no Chameleon credentials" in str(error.value) and "rc_file" in str(error.value)


def test_an_rc_file_that_is_not_there_is_named(tmp_path):
    with pytest.raises(LoginError) as error:
        check(rc_file=str(tmp_path / "nope.sh"))
    assert "rc_file: no OpenStack RC file at" in str(error.value)


def test_an_application_credential_sets_no_project(tmp_path):
    # Keystone refuses a project-scoped token for an application credential, so none is asked for,
    # even when the parameters cell names one.
    login = check(rc_file=app_credential_rc(tmp_path), project="CHI-123456")
    assert login.method == "application credential" and login.project is None and not login.choose_project
    assert os.environ["OS_APPLICATION_CREDENTIAL_ID"] == "abc123"  # loaded for python-chi to read
    assert "the one the credential belongs to" in login.describe()


def test_an_incomplete_application_credential_is_named(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3applicationcredential")
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_ID", "abc123")
    with pytest.raises(LoginError) as error:
        check()
    assert "OS_APPLICATION_CREDENTIAL_SECRET" in str(error.value)


def test_the_hub_session_with_no_project_and_nobody_at_the_notebook_stops(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    with pytest.raises(LoginError) as error:
        check()
    assert "set project = 'CHI-123456'" in str(error.value)


def test_the_hub_session_with_a_person_at_the_notebook_asks_with_the_widget(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/jovyan/work/01_reserve.ipynb")
    login = check()
    assert login.method == "Chameleon's JupyterHub session" and login.choose_project and login.project is None


def test_a_project_parameter_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    monkeypatch.setenv("OS_ACCESS_TOKEN", "tok")
    monkeypatch.setenv("OS_PROJECT_NAME", "CHI-111111")
    assert check().project == "CHI-111111"
    assert check(project="CHI-222222").project == "CHI-222222"


def test_a_password_needs_a_user_name(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3password")
    monkeypatch.setenv("OS_PASSWORD", "pw")
    with pytest.raises(LoginError) as error:
        check(project="CHI-1")
    assert "OS_USERNAME and OS_PASSWORD" in str(error.value)
    monkeypatch.setenv("OS_USERNAME", "student@uni.edu")
    assert check(project="CHI-1").method == "user name and password"


def test_a_token_without_a_token_is_refused(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    with pytest.raises(LoginError) as error:
        check(project="CHI-1")
    assert "OS_ACCESS_TOKEN" in str(error.value)


def test_the_key_pair_is_checked_only_where_a_server_is_made(tmp_path):
    rc = app_credential_rc(tmp_path)
    assert check(rc_file=rc).key_pair is None  # notebooks 01 and 08 need none
    with pytest.raises(LoginError) as error:
        check(rc_file=rc, need_key_pair=True)
    assert "OS_KEYPAIR_PUBLIC_KEY (not set)" in str(error.value) and "ssh-keygen" in str(error.value)


def test_a_key_pair_from_the_rc_file(tmp_path):
    private, public = key_files(tmp_path)
    rc = app_credential_rc(tmp_path, OS_KEYPAIR_PRIVATE_KEY=private, OS_KEYPAIR_PUBLIC_KEY=public)
    login = check(rc_file=rc, need_key_pair=True)
    assert login.key_pair == f"student-jupyter: {public}"  # python-chi's default name: $USER-jupyter


def test_a_key_pair_file_that_is_missing_is_named(tmp_path, monkeypatch):
    private, public = key_files(tmp_path)
    os.remove(private)
    rc = app_credential_rc(tmp_path, OS_KEYPAIR_PRIVATE_KEY=private, OS_KEYPAIR_PUBLIC_KEY=public,
                           OS_KEYPAIR_NAME="trovi-abc")
    with pytest.raises(LoginError) as error:
        check(rc_file=rc, need_key_pair=True)
    assert f"OS_KEYPAIR_PRIVATE_KEY ({private}) is not a private key file" in str(error.value)


def test_python_chi_imported_earlier_reads_the_rc_file_again(tmp_path):
    # python-chi reads OS_* at its first import; the check makes an earlier import see the RC file.
    from chi import context

    rc = app_credential_rc(tmp_path)
    check(rc_file=rc)
    assert context.get("auth_type") == "v3applicationcredential"
    assert context.get("application_credential_id") == "abc123"
