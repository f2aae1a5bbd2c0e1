"""The check before the first python-chi call: sign-in, project and key pair, or what to set."""

from __future__ import annotations

import os

import pytest

from chi_helpers.chameleon import login as chameleon_login
from chi_helpers.chameleon.login import LoginError, check


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("OS_", "JUPYTERHUB_")) or key == "JPY_SESSION_NAME":
            monkeypatch.delenv(key)
    monkeypatch.setenv("USER", "student")


# What Chameleon's JupyterHub puts in a kernel's environment (jupyterhub_chameleon/authenticator/keycloak.py,
# and JupyterHub's spawner for JUPYTERHUB_*): python-chi signs in with the hub's access token.
HUB_SESSION = {
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_API_TOKEN": "server-token",
    "JUPYTERHUB_USER": "student1", "NB_USER": "student1", "OS_AUTH_TYPE": "v3oidcaccesstoken",
    "OS_AUTH_URL": "https://chi.tacc.chameleoncloud.org:5000/v3", "OS_IDENTITY_API_VERSION": "3",
    "OS_INTERFACE": "public", "OS_ACCESS_TOKEN": "eyJ-access", "OS_IDENTITY_PROVIDER": "chameleon",
    "OS_PROTOCOL": "openid", "OS_PROJECT_DOMAIN_NAME": "chameleon",
}


def hub_session(monkeypatch, **changes):
    for key, value in {**HUB_SESSION, **changes}.items():
        monkeypatch.setenv(key, value)


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
    assert "no Chameleon credentials" in str(error.value) and "--rc-file" in str(error.value)


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
    hub_session(monkeypatch)
    with pytest.raises(LoginError) as error:
        check()
    assert "set project = 'CHI-123456'" in str(error.value)


def test_the_hub_session_with_a_person_at_the_notebook_asks_with_the_widget(monkeypatch):
    hub_session(monkeypatch)
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/jovyan/work/01_reserve.ipynb")
    login = check()
    assert login.method == "Chameleon's JupyterHub session" and login.choose_project and login.project is None
    assert login.source == "Chameleon's JupyterHub"


def test_the_hub_session_signs_in_with_no_rc_file_and_no_application_credential(monkeypatch):
    hub_session(monkeypatch)
    login = check(project="CHI-123456")
    assert login.method == "Chameleon's JupyterHub session" and login.project == "CHI-123456"
    assert "the hub's access token" in login.describe() and "Keystone's federation route" in login.describe()


@pytest.mark.parametrize("missing", ["JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER", "OS_ACCESS_TOKEN",
                                     "OS_IDENTITY_PROVIDER", "OS_PROTOCOL"])
def test_a_hub_session_missing_what_the_hub_sets_says_to_restart_the_server(monkeypatch, missing):
    hub_session(monkeypatch)
    monkeypatch.delenv(missing)
    with pytest.raises(LoginError) as error:
        check(project="CHI-123456")
    assert missing in str(error.value) and "Hub Control Panel" in str(error.value)


def test_an_rc_file_on_the_hub_wins_over_the_hub_session(tmp_path, monkeypatch):
    # A student on the hub who loads an application credential's RC file signs in with that.
    hub_session(monkeypatch)
    login = check(rc_file=app_credential_rc(tmp_path))
    assert login.method == "application credential" and login.source.startswith("rc_file ")


def test_a_project_parameter_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    monkeypatch.setenv("OS_ACCESS_TOKEN", "tok")
    monkeypatch.setenv("OS_IDENTITY_PROVIDER", "chameleon")
    monkeypatch.setenv("OS_PROTOCOL", "openid")
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


def test_an_access_token_needs_the_identity_provider_and_protocol(monkeypatch):
    # keystoneauth1's v3oidcaccesstoken loader requires both (loading/identity.py BaseFederationLoader).
    monkeypatch.setenv("OS_AUTH_TYPE", "v3oidcaccesstoken")
    monkeypatch.setenv("OS_ACCESS_TOKEN", "tok")
    with pytest.raises(LoginError) as error:
        check(project="CHI-1")
    assert "OS_IDENTITY_PROVIDER" in str(error.value) and "OS_PROTOCOL" in str(error.value)
    assert "chameleon" in str(error.value) and "openid" in str(error.value)


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
