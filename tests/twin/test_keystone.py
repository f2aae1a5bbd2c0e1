"""The twin's Keystone, through keystoneauth and python-chi as they are."""

from __future__ import annotations

import time

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


# --- application credentials: restricted unless asked (keystone/api/users.py, application_credential) ---


def scoped_token(twin) -> tuple[str, dict]:
    answer = token_request(twin, app_credential(twin))
    return answer.headers["X-Subject-Token"], answer.json()["token"]


def make_credential(twin, name: str, **fields) -> "requests.Response":
    token, body = scoped_token(twin)
    return requests.post(f"{twin.url}/v3/users/{body['user']['id']}/application_credentials",
                         json={"application_credential": {"name": name, **fields}},
                         headers={"X-Auth-Token": token}, timeout=5)


def credential_token(twin, made: dict):
    identity = {"methods": ["application_credential"],
                "application_credential": {"id": made["id"], "secret": made["secret"]}}
    return token_request(twin, identity)


def trust_request(twin, token: str, trustor: str, project: str):
    body = {"trust": {"trustor_user_id": trustor, "trustee_user_id": "blazar", "impersonation": True,
                      "project_id": project, "roles": [{"name": "member"}]}}
    return requests.post(f"{twin.url}/v3/OS-TRUST/trusts", json=body, headers={"X-Auth-Token": token}, timeout=5)


def test_the_twins_own_rc_credential_is_unrestricted(twin):
    # What the rehearsal signs in with: Chameleon's docs have it made with "unrestricted" ticked.
    _, token = scoped_token(twin)
    assert token["application_credential"]["restricted"] is False


def test_a_new_application_credential_is_restricted_unless_asked(twin):
    made = make_credential(twin, "from-the-dashboard")
    assert made.status_code == 201
    restricted = made.json()["application_credential"]
    assert restricted["unrestricted"] is False and restricted["secret"]
    assert restricted["project_id"] == scoped_token(twin)[1]["project"]["id"]
    assert credential_token(twin, restricted).json()["token"]["application_credential"]["restricted"] is True

    unrestricted = make_credential(twin, "ticked", unrestricted=True).json()["application_credential"]
    assert unrestricted["unrestricted"] is True
    assert credential_token(twin, unrestricted).json()["token"]["application_credential"]["restricted"] is False

    again = make_credential(twin, "ticked")
    assert again.status_code == 409 and "Duplicate entry found with name ticked" in again.json()["error"]["message"]


def test_a_restricted_credential_may_make_neither_a_trust_nor_a_credential(twin):
    restricted = make_credential(twin, "restricted").json()["application_credential"]
    answer = credential_token(twin, restricted)
    token, body = answer.headers["X-Subject-Token"], answer.json()["token"]

    refused = trust_request(twin, token, body["user"]["id"], body["project"]["id"])
    assert refused.status_code == 403
    assert "Using method 'application_credential' is not allowed for managing trusts" in refused.json()["error"]["message"]
    another = requests.post(f"{twin.url}/v3/users/{body['user']['id']}/application_credentials",
                            json={"application_credential": {"name": "another"}}, headers={"X-Auth-Token": token},
                            timeout=5)
    assert another.status_code == 403 and "managing additional application credentials" in another.text

    own_token, own = scoped_token(twin)  # the unrestricted one may
    made = trust_request(twin, own_token, own["user"]["id"], own["project"]["id"])
    assert made.status_code == 201 and made.json()["trust"]["trustee_user_id"] == "blazar"
    wrong_trustor = trust_request(twin, own_token, "someone-else", own["project"]["id"])
    assert wrong_trustor.status_code == 403 and "should match the trustor" in wrong_trustor.text


# --- the federation route: an OIDC access token for a token (keystone/api/os_federation.py) ---------------

FEDERATION = "/v3/OS-FEDERATION/identity_providers/{idp}/protocols/{protocol}/auth"


def access_token(twin) -> str:
    """The access token Chameleon's JupyterHub holds for the twin's student (its auth_state)."""
    env = twin.hub_environment()
    answer = requests.get(f"{env['JUPYTERHUB_API_URL']}/users/{env['JUPYTERHUB_USER']}",
                          headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["auth_state"]["access_token"]


def federated(twin, token: str | None, idp: str = "chameleon", protocol: str = "openid", method: str = "post"):
    # What keystoneauth1's OidcAccessToken sends (identity/v3/oidc.py _get_keystone_token): the access
    # token as a bearer, no body.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, twin.url + FEDERATION.format(idp=idp, protocol=protocol), headers=headers,
                            timeout=5)


def test_the_federation_route_gives_an_unscoped_token_then_a_scoped_one_for_the_hubs_access_token(twin):
    answer = federated(twin, access_token(twin))
    assert answer.status_code == 201 and answer.headers["X-Subject-Token"]
    unscoped = answer.json()["token"]
    assert unscoped["methods"] == ["openid"] and "project" not in unscoped and "catalog" not in unscoped
    assert unscoped["user"]["name"] == "ci-user" and unscoped["user"]["domain"]["name"] == "chameleon"
    assert unscoped["user"]["OS-FEDERATION"] == {"groups": [], "identity_provider": {"id": "chameleon"},
                                                 "protocol": {"id": "openid"}}
    assert "password_expires_at" not in unscoped["user"]  # keystone/common/render_token.py, federated

    scope = {"project": {"name": "CHI-000000", "domain": {"name": "chameleon"}}}
    rescoped = token_request(twin, {"methods": ["token"], "token": {"id": answer.headers["X-Subject-Token"]}}, scope)
    assert rescoped.status_code == 201, rescoped.text
    scoped = rescoped.json()["token"]
    assert scoped["project"]["name"] == "CHI-000000" and scoped["catalog"]
    assert scoped["user"]["OS-FEDERATION"]["identity_provider"] == {"id": "chameleon"}
    # keystone/auth/plugins/mapped.py handle_scoped_token: a rescoped token keeps the original's expiry.
    assert scoped["expires_at"] == unscoped["expires_at"]
    assert federated(twin, access_token(twin), method="get").status_code == 201  # GET is routed too


def test_a_missing_or_unknown_access_token_is_refused_401(twin):
    for token in (None, "not-an-access-token"):
        answer = federated(twin, token)
        assert answer.status_code == 401, token
        assert answer.json()["error"]["message"] == "The request you have made requires authentication."
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_access_token_is_refused_401(twin):
    from chi_helpers.twin import keycloak

    keycloak.set_lifetimes(twin.world, access_token=60)
    twin.hub_sign_in()
    token = access_token(twin)
    twin.pass_time(61, browser_every=None)
    answer = federated(twin, token)
    assert answer.status_code == 401 and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    keycloak.set_lifetimes(twin.world, access_token=3600)
    twin.pass_time(3600)  # the hub renews the sign-in within the hour: a new token, accepted
    assert access_token(twin) != token and federated(twin, access_token(twin)).status_code == 201


def test_an_unknown_identity_provider_or_protocol_is_not_found(twin):
    token = access_token(twin)
    assert federated(twin, token, idp="github").json()["error"]["message"] == \
        "Could not find Identity Provider: github."
    other = federated(twin, token, protocol="saml2")
    assert other.status_code == 404
    assert other.json()["error"]["message"] == \
        "Could not find federated protocol saml2 for Identity Provider: chameleon."


def test_a_token_expires_and_its_rescoping_is_refused(twin):
    from chi_helpers.twin import keystone

    keystone.set_lifetimes(twin.world, keystone_token=1)
    answer = federated(twin, access_token(twin))
    time.sleep(1.2)
    identity = {"methods": ["token"], "token": {"id": answer.headers["X-Subject-Token"]}}
    assert token_request(twin, identity, {"project": {"name": "CHI-000000"}}).status_code == 404
    check = requests.get(f"{twin.url}/v3/auth/tokens", headers={
        "X-Auth-Token": token_request(twin, app_credential(twin)).headers["X-Subject-Token"],
        "X-Subject-Token": answer.headers["X-Subject-Token"]}, timeout=5)
    assert check.status_code == 404


# --- application credentials' roles (keystone/api/users.py _get_roles; models/token_model.py) -----------


def role_names(token: dict) -> set[str]:
    return {role["name"] for role in token["roles"]}


def test_a_credential_carries_the_roles_of_the_token_that_made_it_unless_given(twin):
    _, token = scoped_token(twin)
    assert role_names(token) == {"member", "reader"}  # the user's, with member's implied reader
    every = make_credential(twin, "all-roles").json()["application_credential"]
    assert {role["name"] for role in every["roles"]} == {"member", "reader"}
    assert role_names(credential_token(twin, every).json()["token"]) == {"member", "reader"}


def test_a_member_only_credential_has_no_reader_in_its_tokens(twin):
    # Keystone before 2024.2 adds no implied role to a credential made with roles (fixed in 26.0.0,
    # bug 2030061); Chameleon's docs: add `reader` alongside `member`. Before: every credential had both.
    made = make_credential(twin, "member-only", roles=[{"name": "member"}]).json()["application_credential"]
    assert [role["name"] for role in made["roles"]] == ["member"]
    assert role_names(credential_token(twin, made).json()["token"]) == {"member"}


def test_a_credential_may_not_have_a_role_its_maker_lacks(twin):
    refused = make_credential(twin, "admin", roles=[{"name": "admin"}])
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == \
        "Invalid application credential: Cannot create an application credential with unassigned role"
