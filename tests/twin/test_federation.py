"""Signing in the way Chameleon's JupyterHub does, through the real python-chi: no RC file, no
application credential, an OIDC access token that python-chi asks the hub for.

Each test runs a fresh Python with the environment a hub kernel has (the twin writes it beside its
RC files, `twin-hub.env`): python-chi reads JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN once, when it
is first imported, as in a kernel the hub started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest

from chi_helpers import network_guard
from chi_helpers.series import REPO_ROOT
from chi_helpers.twin import keycloak, keystone

FEDERATION_PATH = "/v3/OS-FEDERATION/identity_providers/chameleon/protocols/openid/auth"
HUB_USER_PATH = "/hub/api/users/ci-user"

# What a notebook's sign-in cell does (notebooks/*/01_reserve.ipynb), then a Blazar call.
SIGN_IN = """
    import json, sys, time
    from chi import context, lease
    from chi_helpers.chameleon import login

    context.use_site("CHI@TACC")
    account = login.use_project("CHI-000000")
    try:
        login.verify()
    except login.LoginError as error:
        print(json.dumps({"refused": str(error)}))
        sys.exit(3)
    said = {"method": account.method, "source": account.source,
            "plugin": type(context.session().session.auth).__name__,
            "leases": [l.name for l in lease.list_leases()]}
"""


def hub_process(twin, script: str, **changes) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `script` in a fresh, guarded Python with the hub kernel's environment (and `changes`)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "JUPYTERHUB_", "CHI_"))}
    env = network_guard.environment({**base, **twin.hub_environment(), **changes})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SIGN_IN) + textwrap.dedent(script)], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    last = (done.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        return done, json.loads(last)
    except ValueError:
        return done, {}


def requests_to(twin, method: str, path: str) -> list[str]:
    """The status codes the twin answered to `method path`, in order (its requests log)."""
    log = twin.world.state_dir / "requests.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.rsplit(" ", 1)[1] for line in lines if line.rsplit(" ", 1)[0] == f"{method} {path}"]


def test_the_twin_writes_the_environment_a_hub_kernel_has(twin):
    env = twin.hub_environment()
    # jupyterhub-chameleon authenticator/openstack_oauth.py `authenticate` (its openstack_rc, copied into the
    # server's environment by pre_spawn_start) and the prod config (CHI@UC); JupyterHub adds JUPYTERHUB_*.
    assert env["OS_AUTH_TYPE"] == "v3oidcaccesstoken" and env["OS_IDENTITY_PROVIDER"] == "chameleon"
    assert env["OS_PROTOCOL"] == "openid" and env["OS_PROJECT_DOMAIN_NAME"] == "chameleon" and env["OS_ACCESS_TOKEN"]
    assert env["OS_REGION_NAME"] == "CHI@UC" and env["OS_AUTH_URL"].endswith(":5000/v3")
    assert env["OS_INTERFACE"] == "public" and env["OS_IDENTITY_API_VERSION"] == "3"
    assert env["OS_PROJECT_NAME"] == "CHI-000000"  # the first (here the only) of the student's projects
    assert env["JUPYTERHUB_API_URL"] == f"{twin.url}/hub/api" and env["JUPYTERHUB_USER"] == env["NB_USER"]
    assert env["JUPYTERHUB_API_TOKEN"] and env[network_guard.VARIABLE] and env["CHI_RESOURCE_API_URL"]
    assert not any(k.startswith(("OS_APPLICATION", "OS_PASSWORD", "OS_USERNAME")) for k in env)


def test_the_hub_names_the_first_of_the_students_projects_by_name(twin):
    keystone.add_project(twin.world, "ci-user", "CHI-190001")  # sorts after CHI-000000
    keystone.add_project(twin.world, "ci-user", "CHI-000-AAA")  # ... this one before it
    assert twin.hub_sign_in()["OS_PROJECT_NAME"] == "CHI-000-AAA"


# Notebook 01's sign-in cell, with the project of its parameters cell as the first argument.
RESERVING = """
    import json, sys
    from chi import context
    from chi_helpers.chameleon import login

    context.use_site("CHI@TACC")
    login.use_project(sys.argv[1])
    try:
        login.verify(new_lease=True)
    except login.LoginError as error:
        print(json.dumps({"refused": str(error)}))
        sys.exit(3)
    print(json.dumps({"project": context.get("project_name")}))
"""


def reserving_cell(twin, project: str) -> tuple[subprocess.CompletedProcess, dict]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "JUPYTERHUB_", "CHI_"))}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RESERVING), project], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120,
                          env=network_guard.environment({**base, **twin.hub_environment()}))
    return done, json.loads((done.stdout.strip().splitlines() or ["{}"])[-1])


def test_a_student_in_two_projects_is_told_which_pays_and_chooses_before_any_lease(twin):
    from chi_helpers.chameleon import login

    keystone.add_project(twin.world, "ci-user", "CHI-190001")
    assert twin.hub_sign_in()["OS_PROJECT_NAME"] == "CHI-000000"  # the hub's pick: the first by name
    done, said = reserving_cell(twin, "")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "member of 2 projects (CHI-000000, CHI-190001)" in said["refused"] and "Nothing is reserved" in said["refused"]
    assert "project: CHI-000000 (the hub's default" in done.stdout  # what the hub would have charged, named
    done, said = reserving_cell(twin, "CHI-190001")
    assert done.returncode == 0 and said == {"project": "CHI-190001"}, done.stderr[-3000:]
    assert "project CHI-190001 pays for what these notebooks reserve; your projects: CHI-000000, CHI-190001" in done.stdout
    assert login.CHOICE_FILE.read_text().strip() == "CHI-190001"  # kept for the other notebooks
    done, said = reserving_cell(twin, "")  # the next notebook, with its project left empty
    assert said == {"project": "CHI-190001"} and f"your choice, kept in {login.CHOICE_FILE.name}" in done.stdout


def test_a_hub_kernel_signs_in_through_the_federation_route_and_lists_leases(twin, chi):
    import chi.lease

    start = (twin.world.now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    lease = chi.lease.Lease("made-elsewhere", start_date=start, end_date=start + timedelta(hours=2))
    lease.add_node_reservation(amount=1, node_name="liqid01")
    lease.submit(idempotent=False, wait_for_active=False)  # with the application credential, same project

    done, said = hub_process(twin, "print(json.dumps(said))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert said == {"method": "Chameleon's JupyterHub session", "source": "Chameleon's JupyterHub",
                    "plugin": "OidcAccessToken", "leases": ["made-elsewhere"]}
    assert requests_to(twin, "GET", HUB_USER_PATH) == ["200"]  # python-chi asked the hub once
    assert requests_to(twin, "POST", FEDERATION_PATH) == ["201"]
    signed_in = [e["what"] for e in twin.world.data["events"] if e["service"] == "keystone"]
    assert "federated token for ci-user (chameleon, openid)" in signed_in
    assert signed_in[-1] == "token for ci-user in CHI-000000"  # then scoped, with the token method


def hub_user_model(twin) -> tuple[int, dict]:
    """GET /hub/api/users/<name> with the server's token, as python-chi asks it."""
    import requests

    env = twin.hub_environment()
    answer = requests.get(f"{env['JUPYTERHUB_API_URL']}/users/{env['JUPYTERHUB_USER']}", timeout=10,
                          headers={"authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"})
    return answer.status_code, answer.json()


def test_the_hub_renews_a_sign_in_hourly_and_the_renewed_state_has_no_expiry(twin):
    status, first = hub_user_model(twin)
    state = first["auth_state"]
    assert status == 200 and {"expires_at", "refresh_expires_at", "openstack_rc"} <= set(state)
    assert state["expires_at"] == keycloak.claims(state["access_token"])["exp"]
    twin.pass_time(30 * 60, browser_every=None)
    assert hub_user_model(twin)[1]["auth_state"] == state  # asking renews nothing before the hour is out
    twin.pass_time(31 * 60, browser_every=None)  # an hour and a minute: the access token (an hour) has expired
    status, renewed = hub_user_model(twin)
    new = renewed["auth_state"]
    # oauthenticator's build_auth_state_dict, and nothing of jupyterhub-chameleon's authenticate.
    assert status == 200 and set(new) == {"access_token", "refresh_token", "id_token", "scope", "token_response",
                                          "oauth_user"}
    assert new["access_token"] != state["access_token"]  # by the refresh grant: the old one had expired
    assert keycloak.userinfo(twin.world, new["access_token"]) and not keycloak.userinfo(twin.world, state["access_token"])


def test_python_chi_fails_on_the_renewed_state_and_the_series_mends_it(twin, faketime):
    """python-chi keeps the hub's `expires_at` and, after a renewal, None, and fails at its next look at the
    token (chi/context.py: None - time.time()). A kernel that lives through two hours of a session signs in to
    Keystone three times (its tokens last an hour here, as Keystone's default): the third look fails. The
    series' sign-in reads the expiry from the token instead."""
    keystone.set_lifetimes(twin.world, keystone_token=3600)
    twin.hub_sign_in()
    script = """
        import os, requests
        def an_hour_passes():
            requests.post(f"{os.environ['CHI_RESOURCE_API_URL'][:-4]}/twin/clock", json={"advance": 3700}, timeout=60)
        for hour in (1, 2):
            an_hour_passes()
            try:
                said[f"hour {hour}"] = len(lease.list_leases())
            except TypeError as error:
                said[f"hour {hour}"] = f"TypeError: {error}"
        print(json.dumps(said))
    """
    # The same, with python-chi's own refresh back in place after the sign-in.
    raw = script.replace("import os, requests", "import os, requests, chi.jupyterhub as hub\n"
                                                "        hub.refresh_access_token = hub.refresh_access_token.original")
    assert raw != script
    done, said = hub_process(twin, script, **faketime)
    assert done.returncode == 0, done.stderr[-3000:]
    assert said["hour 1"] == 0 and said["hour 2"] == 0  # mended: the series' sign-in
    assert "reads the expiry from the token" in done.stdout
    assert requests_to(twin, "POST", FEDERATION_PATH).count("201") == 3

    twin.hub_sign_in()
    done, said = hub_process(twin, raw, **faketime)
    assert done.returncode == 0, done.stderr[-3000:]
    assert said["hour 1"] == 0  # the second sign-in stores the renewed state's None ...
    assert str(said["hour 2"]).startswith("TypeError: unsupported operand type(s) for -: 'NoneType' and 'float'")


def test_a_sign_in_the_hub_cannot_renew_any_more_says_to_log_in_again(twin):
    """Once the refresh token has expired too, the hub's hourly renewal fails (oauthenticator refresh_user:
    False) and JupyterHub answers 403 until the student logs in again."""
    keycloak.set_lifetimes(twin.world, refresh_token=90 * 60)  # a session of 90 minutes, not Keycloak's 10 h
    twin.hub_sign_in()
    twin.pass_time(2 * 3600, browser_every=600)  # the renewal at 1 h works; the one at 2 h meets an expired refresh
    status, body = hub_user_model(twin)
    assert status == 403 and body == {"status": 403, "message": "Missing or invalid credentials."}
    done, said = hub_process(twin, "print(json.dumps(said))")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "403" in said["refused"] and "Log out of the hub" in said["refused"]
    assert "sign-in to the hub has run out" in said["refused"]
    twin.hub_sign_in()
    assert hub_user_model(twin)[0] == 200  # a new sign-in brings new tokens


def test_an_expired_token_the_hub_still_hands_out_is_named_with_its_time(twin, faketime):
    """Access tokens shorter than the hub's hour: between their end and the next renewal the hub hands out
    the expired one, and Keystone refuses it."""
    keycloak.set_lifetimes(twin.world, access_token=600)
    twin.hub_sign_in()
    twin.pass_time(20 * 60, browser_every=60)
    done, said = hub_process(twin, "print(json.dumps(said))", **faketime)
    assert done.returncode == 3, done.stderr[-3000:]
    expired = time.strftime("%H:%M UTC", time.gmtime(twin.world.now().timestamp() - 10 * 60))
    assert f"it expired at {expired}" in said["refused"] and "once an hour" in said["refused"]
    assert requests_to(twin, "POST", FEDERATION_PATH)[-1] == "401"


def test_a_wrong_hub_api_token_stops_at_verify_with_what_to_do(twin):
    done, said = hub_process(twin, "print(json.dumps(said))", JUPYTERHUB_API_TOKEN="not-this-servers-token")
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-3000:]
    message = said["refused"]
    assert "JupyterHub refused" in message and "403" in message and "JUPYTERHUB_API_TOKEN" in message
    assert "Hub Control Panel" in message  # what to do: restart the server, which gets a new token
    assert requests_to(twin, "GET", HUB_USER_PATH) == ["403"]
    assert requests_to(twin, "POST", FEDERATION_PATH) == []  # nothing reached Keystone


def test_keystone_refusing_the_hub_session_says_to_sign_in_again(twin):
    twin.world.inject("keystone-refuses")
    done, said = hub_process(twin, "print(json.dumps(said))")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Keystone refused" in said["refused"] and "log out of the hub" in said["refused"].lower()
    assert "application credential" not in said["refused"]  # the hub's way has none
    assert requests_to(twin, "POST", FEDERATION_PATH) == ["401"]


@pytest.mark.parametrize("missing", ["JUPYTERHUB_API_TOKEN", "OS_ACCESS_TOKEN", "OS_IDENTITY_PROVIDER"])
def test_a_hub_session_missing_a_variable_stops_at_the_check(twin, missing):
    done, _ = hub_process(twin, "", **{missing: ""})
    assert done.returncode != 0 and "LoginError" in done.stderr and missing in done.stderr
    assert requests_to(twin, "GET", HUB_USER_PATH) == []  # stopped before python-chi sent anything
