"""The twin's Keystone, through keystoneauth and python-chi as they are."""

from __future__ import annotations

import pytest
import requests


def token_request(twin, identity: dict, scope: dict | None = None):
    body = {"auth": {"identity": identity}}
    if scope:
        body["auth"]["scope"] = scope
    return requests.post(f"{twin.url}/v3/auth/tokens", json=body, timeout=5)


def app_credential(twin) -> dict:
    env = twin.environment()
    return {"methods": ["application_credential"], "application_credential": {
        "id": env["OS_APPLICATION_CREDENTIAL_ID"], "secret": env["OS_APPLICATION_CREDENTIAL_SECRET"]}}


def test_an_application_credential_gets_a_token_scoped_to_its_project(twin):
    answer = token_request(twin, app_credential(twin))
    assert answer.status_code == 201 and answer.headers["X-Subject-Token"]
    token = answer.json()["token"]
    assert token["project"]["name"] == "CHI-000000"
    assert {e["type"] for e in token["catalog"]} >= {"identity", "reservation", "compute", "network", "image"}


def test_an_application_credential_asking_for_a_scope_is_refused(twin):
    scope = {"project": {"name": "CHI-000000", "domain": {"name": "chameleon"}}}
    answer = token_request(twin, app_credential(twin), scope)
    assert answer.status_code == 401
    assert "cannot request a scope" in answer.json()["error"]["message"]


def test_a_wrong_secret_is_refused(twin):
    identity = app_credential(twin)
    identity["application_credential"]["secret"] = "wrong"
    assert token_request(twin, identity).status_code == 401


def test_python_chi_signs_in_with_the_rc_file(chi):
    session = chi.session()
    assert session.get_project_id()
    assert chi.get("auth_url").startswith("http://127.")


def test_python_chi_with_use_project_is_refused_like_keystone_does(chi):
    from keystoneauth1.exceptions import Unauthorized

    chi.use_project("CHI-000000")
    with pytest.raises(Unauthorized):
        chi.session().get_project_id()


def test_the_guard_refuses_a_public_address_before_sending():
    for url in ("https://api.chameleoncloud.org/sites.json", "http://192.0.2.1/"):
        with pytest.raises(requests.ConnectionError) as error:
            requests.get(url, timeout=5)
        assert "network guard: refused a connection" in str(error.value)
