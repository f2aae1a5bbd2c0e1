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
from datetime import datetime, timedelta

import pytest

from chi_helpers import network_guard
from chi_helpers.series import REPO_ROOT
from chi_helpers.twin import jupyterhub, keystone

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
    # jupyterhub_chameleon/authenticator/keycloak.py (the OS_* it puts in the spawner's environment) and
    # spawner.py (NB_USER, the key pair); JupyterHub's spawner adds JUPYTERHUB_*.
    assert env["OS_AUTH_TYPE"] == "v3oidcaccesstoken" and env["OS_IDENTITY_PROVIDER"] == "chameleon"
    assert env["OS_PROTOCOL"] == "openid" and env["OS_PROJECT_DOMAIN_NAME"] == "chameleon" and env["OS_ACCESS_TOKEN"]
    assert env["JUPYTERHUB_API_URL"] == f"{twin.url}/hub/api" and env["JUPYTERHUB_USER"] == env["NB_USER"]
    assert env["JUPYTERHUB_API_TOKEN"] and env[network_guard.VARIABLE] and env["CHI_RESOURCE_API_URL"]
    assert not any(k.startswith(("OS_APPLICATION", "OS_PASSWORD", "OS_USERNAME", "OS_PROJECT_NAME")) for k in env)


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


def test_python_chi_refreshes_an_expired_access_token_through_the_hub(twin):
    # Access tokens last 3 s: python-chi (60 s ahead) and the hub (120 s ahead) renew one whenever it is
    # needed. Keystone's tokens last 126 s: keystoneauth signs in again once fewer than 120 s are left,
    # 6 s on; by then the first access token has expired, and Keystone refuses an expired one.
    keystone.set_lifetimes(twin.world, access_token=3, keystone_token=126)
    jupyterhub.log_in_again(twin.world, "ci-user")
    done, said = hub_process(twin, """
        said["first"] = time.time()
        time.sleep(7)
        said["again"] = len(lease.list_leases())
        print(json.dumps(said))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert said["again"] == 0 and said["plugin"] == "OidcAccessToken"
    hub_calls = requests_to(twin, "GET", HUB_USER_PATH)
    assert len(hub_calls) >= 2 and set(hub_calls) == {"200"}  # the second one: the refresh
    sign_ins = requests_to(twin, "POST", FEDERATION_PATH)
    assert len(sign_ins) >= 2 and set(sign_ins) == {"201"}  # never with an expired access token
    first_token_expired = min(t["expires_at"] for t in twin.world.data["access_tokens"].values())
    federated = [datetime.fromisoformat(e["at"]).timestamp() for e in twin.world.data["events"]
                 if e["service"] == "keystone" and e["what"].startswith("federated token")]
    assert federated[-1] > first_token_expired and federated[-1] > said["first"] + 6  # signed in again, later
    assert "refreshed the access token of ci-user" in [e["what"] for e in twin.world.data["events"]
                                                       if e["service"] == "jupyterhub"]


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
