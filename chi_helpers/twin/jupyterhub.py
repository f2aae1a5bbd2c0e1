"""Chameleon's JupyterHub, as far as python-chi asks it for something: a student's access token.

In a kernel the hub started, python-chi 1.2.10 (chi/jupyterhub.py refresh_access_token) asks
`GET $JUPYTERHUB_API_URL/users/$JUPYTERHUB_USER` with `authorization: token $JUPYTERHUB_API_TOKEN`
and reads `auth_state.access_token` and `auth_state.expires_at` (seconds since the epoch). It asks
when it has no token yet and whenever the one it has expires within 60 s (chi/context.py
_SessionWithAccessTokenRefresh). As the hub does:

- the API token is the one JupyterHub gave the student's server; a missing or unknown one is refused
  403 "Missing or invalid credentials." (jupyterhub/scopes.py needs_scope), another user's name is
  404 (the same answer for "not yours" and "not there"), errors as `{"status", "message"}`
  (jupyterhub/apihandlers/base.py write_error);
- the user model carries `auth_state` as Chameleon's authenticator stores it
  (jupyterhub_chameleon/authenticator/keycloak.py authenticate): the access token, the refresh token,
  `expires_at`, and the OpenStack variables the spawner is given;
- an access token that expires within 120 s is renewed with Keycloak first
  (jupyterhub_chameleon/handler.py AccessTokenMixin.refresh_token, TOKEN_EXPIRY_REFRESH_THRESHOLD).

Keycloak's side (issuing access tokens, and saying whether one is still good) is in twin/keystone.py,
beside the federation route that takes them. How long an access token lasts is
`keystone.set_lifetimes(world, access_token=...)`: short, in a test, so the refresh runs.
"""

from __future__ import annotations

import re

from . import keystone
from .web import Fault, Request, Service, reply

PREFIX = "/hub/api"
VERSION = "5.3.0"
REFRESH_THRESHOLD = 120  # seconds: jupyterhub_chameleon/handler.py TOKEN_EXPIRY_REFRESH_THRESHOLD
AUTH_HEADER = re.compile(r"^(?:token|bearer)\s+([^\s]+)$", re.IGNORECASE)  # jupyterhub/handlers/base.py


def seed(world, user_name: str) -> dict:
    """A student signed in to the hub with a running server: the server's API token and the auth state
    the authenticator saved at sign-in. Returns the hub's record of the student."""
    user = next(u for u in world.data["users"].values() if u["name"] == user_name)
    record = {"name": user_name, "user_id": user["id"], "api_token": world.new_id().replace("-", ""),
              "auth_state": {"is_federated": True, "openstack_rc": spawner_openstack_rc(world)}}
    world.data.setdefault("hub_users", {})[user_name] = record
    _renew(world, record)
    return record


def log_in_again(world, user_name: str) -> dict:
    """What logging out of the hub and in again does: a new auth state, with an access token that lasts
    as long as Keycloak's tokens last now."""
    record = world.data["hub_users"][user_name]
    _renew(world, record)
    return record


def spawner_openstack_rc(world) -> dict[str, str]:
    """The OS_* the hub puts in the server's environment (jupyterhub_chameleon/authenticator/keycloak.py:
    `openstack_rc` in auth_state, copied into the spawner's environment by pre_spawn_start)."""
    return {"OS_AUTH_URL": world.url("/v3"), "OS_INTERFACE": "public", "OS_IDENTITY_API_VERSION": "3",
            "OS_IDENTITY_PROVIDER": keystone.IDENTITY_PROVIDER, "OS_PROTOCOL": keystone.PROTOCOL,
            "OS_AUTH_TYPE": "v3oidcaccesstoken", "OS_PROJECT_DOMAIN_NAME": keystone.DOMAIN["name"],
            "OS_REGION_NAME": "CHI@TACC"}


def _renew(world, record: dict) -> None:
    """A new access token from Keycloak (a refresh-token grant), saved in the auth state."""
    issued = keystone.issue_access_token(world, record["user_id"])
    state = record["auth_state"]
    state.update(access_token=issued["access_token"], expires_at=issued["expires_at"],
                 refresh_token="refresh-" + world.new_id().replace("-", ""))
    state["openstack_rc"]["OS_ACCESS_TOKEN"] = issued["access_token"]


class JupyterHub(Service):
    prefix = PREFIX
    name = "jupyterhub"
    routes = [
        ("GET", "/", "version"),
        ("GET", "/users/(?P<name>[^/]+)", "user_model"),
    ]

    def error_body(self, status, message):
        return {"status": status, "message": message}

    def version(self, request: Request):
        return reply(200, {"version": VERSION})

    def _requester(self, request: Request) -> dict:
        """The student whose server's API token this request carries; 403 for none or an unknown one."""
        match = AUTH_HEADER.match(request.headers.get("authorization", ""))
        token = match.group(1) if match else None
        owner = next((u for u in self.world.data.get("hub_users", {}).values() if token and u["api_token"] == token),
                     None)
        if owner is None:
            self.world.record("jupyterhub", "refused a request without a valid API token")
            raise Fault(403, "Missing or invalid credentials.")
        return owner

    def user_model(self, request: Request):
        """jupyterhub/apihandlers/users.py UserAPIHandler.get, for a server token that may read its own
        user's auth state (Chameleon's hub grants that: python-chi depends on it)."""
        owner = self._requester(request)
        if request.param("name") != owner["name"]:
            raise Fault(404, "No access to resources or resources not found")
        state = owner["auth_state"]
        if state["expires_at"] - self.world.now().timestamp() < REFRESH_THRESHOLD:
            _renew(self.world, owner)
            self.world.record("jupyterhub", f"refreshed the access token of {owner['name']}")
        self.world.record("jupyterhub", f"auth_state of {owner['name']}")
        return reply(200, {
            "kind": "user", "name": owner["name"], "admin": False, "groups": [], "roles": ["user"],
            "server": f"/user/{owner['name']}/", "pending": None,
            "last_activity": self.world.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "auth_state": {**state, "openstack_rc": dict(state["openstack_rc"])},
        })


def services(world) -> list[Service]:
    return [JupyterHub(world)]
