"""Chameleon's JupyterHub, as a student's kernel meets it: the environment it starts a server with, and the
auth state python-chi reads its access token from.

Read from ChameleonCloud/jupyterhub-chameleon (master 13932f7, `authenticator/openstack_oauth.py`),
ChameleonCloud/jupyterhub-kubernetes (`config/jupyterhub_config.yaml`, `jupyterhub_config_prod.yaml`),
oauthenticator 17.x (`oauth2.py`) and JupyterHub 5.x (`handlers/base.py`, `scopes.py`):

- **Sign-in** (`sign_in`, openstack_oauth.py `authenticate`): the auth state is oauthenticator's
  `build_auth_state_dict` (access, refresh and id tokens, scope, the token response, the user info) plus
  `is_federated`, `expires_at` and `refresh_expires_at` (the tokens' `exp`, read from the JWTs) and
  `openstack_rc`: CHI@UC's Keystone and region (the prod config), the federation's identity provider
  and protocol, `v3oidcaccesstoken`, the access token, and `OS_PROJECT_NAME`, the first of the student's
  projects in the userinfo's `projects` claim (sorted by name: twin/keycloak.py).
- **The server's environment** (`spawn_environment`): `openstack_rc` copied in by `pre_spawn_start`,
  JupyterHub's own `JUPYTERHUB_*`, and the key pair of the single-user config (`OS_KEYPAIR_*`, in the
  work folder the student's 512 MB volume is mounted at).
- **Refresh** (`refresh_auth`): JupyterHub refreshes a user's auth before it answers any authenticated
  request, a server's API token included (`BaseHandler.get_current_user`), when the last refresh is
  older than `auth_refresh_age`: 3600 s, which jupyterhub-chameleon fixes on its authenticator class.
  oauthenticator's `refresh_user` asks Keycloak's userinfo with the stored access token; where that is
  refused it makes a refresh grant; where that is refused too it returns False ("Login is required"),
  and every request is answered 403 "Missing or invalid credentials." until the student signs in again.
  The auth state a refresh stores is `build_auth_state_dict`'s alone: **no `expires_at`,
  `refresh_expires_at` or `openstack_rc`** (jupyterhub-chameleon overrides neither method). There is no
  other renewal: asking for the user model renews nothing of itself.
- **The user model** (`GET /hub/api/users/{name}`, apihandlers/users.py): for a server's own token,
  which may read its user's auth state (the `admin:auth_state!user` scope jupyterhub-kubernetes grants);
  no token or an unknown one is 403, another user's name 404; errors as `{"status", "message"}`.

`browser_request` is the student's browser at the hub: jupyterlab-chameleon's page asks the hub every
minute while it is open, so an hourly refresh happens within a minute of falling due.
"""

from __future__ import annotations

import re

from . import keycloak, sites
from .keystone import DOMAIN, IDENTITY_PROVIDER, PROTOCOL
from .web import Fault, Request, Service, reply

PREFIX = "/hub/api"
VERSION = "5.2.1"  # zero-to-jupyterhub 4.0.0's, which Chameleon's chart uses
AUTH_REFRESH_AGE = 3600  # seconds: jupyterhub-chameleon OpenstackOAuthenticator.auth_refresh_age
HUB_SITE = "CHI@UC"  # whose Keystone and region the hub's OS_* name (jupyterhub_config_prod.yaml)
WORK = "/work"  # where the student's volume is mounted (singleuser.storage.homeMountPath)
AUTH_HEADER = re.compile(r"^(?:token|bearer)\s+([^\s]+)$", re.IGNORECASE)  # jupyterhub/handlers/base.py
LOGIN_REQUIRED = "Missing or invalid credentials."  # jupyterhub/scopes.py needs_scope


def _auth_state_dict(tokens: dict, user: dict) -> dict:
    """oauthenticator oauth2.py build_auth_state_dict: what every sign-in and refresh stores."""
    return {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
            "id_token": tokens["id_token"], "scope": tokens["scope"].split(), "token_response": dict(tokens),
            "oauth_user": {"sub": user["id"], "preferred_username": user["name"]}}


def openstack_rc(world, user_id: str, access_token: str) -> dict[str, str]:
    """openstack_oauth.py authenticate: the OS_* the spawner is given."""
    projects = keycloak.projects_claim(world, user_id)
    return {"OS_AUTH_URL": f"http://{sites.address_of(world, HUB_SITE)}:{world.port}/v3",
            "OS_REGION_NAME": HUB_SITE, "OS_INTERFACE": "public", "OS_IDENTITY_API_VERSION": "3",
            "OS_IDENTITY_PROVIDER": IDENTITY_PROVIDER, "OS_PROTOCOL": PROTOCOL, "OS_PROJECT_DOMAIN_NAME": DOMAIN["name"],
            "OS_AUTH_TYPE": "v3oidcaccesstoken", "OS_ACCESS_TOKEN": access_token,
            "OS_PROJECT_NAME": projects[0]["id"]}


def sign_in(world, user_name: str) -> dict:
    """The student signs in to the hub (again): new tokens and a fresh auth state; the server keeps its API
    token. Returns the hub's record of the student."""
    user = next(u for u in world.data["users"].values() if u["name"] == user_name)
    records = world.data.setdefault("hub_users", {})
    record = records.get(user_name) or {"name": user_name, "user_id": user["id"],
                                        "api_token": world.new_id().replace("-", "")}
    tokens = keycloak.issue(world, user["id"])
    state = _auth_state_dict(tokens, user)
    state.update(is_federated=True, expires_at=keycloak.claims(tokens["access_token"])["exp"],
                 refresh_expires_at=keycloak.claims(tokens["refresh_token"])["exp"],
                 openstack_rc=openstack_rc(world, user["id"], tokens["access_token"]))
    record.update(auth_state=state, refreshed_at=world.now().timestamp(), login_required=False)
    records[user_name] = record
    world.record("jupyterhub", f"{user_name} signed in")
    return record


def seed(world, user_name: str) -> dict:
    """A student signed in to the hub, with a running server."""
    return sign_in(world, user_name)


def spawn_environment(world, record: dict, keys_folder: str) -> dict[str, str]:
    """What the hub gives the student's server: JupyterHub's own variables, `openstack_rc` (pre_spawn_start),
    and the key pair in the work folder (jupyterhub_config.yaml singleuser.extraEnv)."""
    # NB_USER: jupyterhub-chameleon spawner.py get_env; the image's start.sh then runs the server with sudo as
    # that user, and sudo sets USER (python-chi names the key pair $USER-jupyter).
    return {"JUPYTERHUB_API_URL": world.url(PREFIX), "JUPYTERHUB_API_TOKEN": record["api_token"],
            "JUPYTERHUB_USER": record["name"], "NB_USER": record["name"], "USER": record["name"],
            **record["auth_state"].get("openstack_rc", {}),
            "OS_KEYPAIR_PRIVATE_KEY": f"{keys_folder}/id_rsa", "OS_KEYPAIR_PUBLIC_KEY": f"{keys_folder}/id_rsa.pub"}


def refresh_auth(world, record: dict) -> bool:
    """JupyterHub's refresh_auth with oauthenticator's refresh_user; False where a new sign-in is needed."""
    if record.get("login_required"):
        return False  # refresh_user is asked again at every request, and fails again
    now = world.now().timestamp()
    if now - record["refreshed_at"] < AUTH_REFRESH_AGE:
        return True
    state = record["auth_state"]
    user = keycloak.userinfo(world, state["access_token"])
    if user is not None:
        tokens = state["token_response"]  # the access token still works: the same tokens, a new model
    else:
        tokens = keycloak.refresh_grant(world, state["refresh_token"])
        user = world.data["users"][record["user_id"]]
    if tokens is None:
        record["login_required"] = True
        world.record("jupyterhub", f"User {record['name']} has stale auth info. Login is required to refresh.")
        return False
    record["auth_state"] = _auth_state_dict(tokens, user)  # no expires_at, refresh_expires_at, openstack_rc
    record["refreshed_at"] = now
    world.record("jupyterhub", f"refreshed the auth state of {record['name']}")
    return True


def browser_request(world, user_name: str) -> bool:
    """The student's open hub page asks the hub something: the refresh falls due as for any request."""
    return refresh_auth(world, world.data["hub_users"][user_name])


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
        """The student whose server's API token this request carries, its auth refreshed when due; 403 for
        none, an unknown token, or an auth that needs a new sign-in."""
        match = AUTH_HEADER.match(request.headers.get("authorization", ""))
        token = match.group(1) if match else None
        owner = next((u for u in self.world.data.get("hub_users", {}).values() if token and u["api_token"] == token),
                     None)
        if owner is None:
            self.world.record("jupyterhub", "refused a request without a valid API token")
            raise Fault(403, LOGIN_REQUIRED)
        if not refresh_auth(self.world, owner):
            raise Fault(403, LOGIN_REQUIRED)
        return owner

    def user_model(self, request: Request):
        """jupyterhub/apihandlers/users.py UserAPIHandler.get, for a server token that may read its own
        user's auth state."""
        owner = self._requester(request)
        if request.param("name") != owner["name"]:
            raise Fault(404, "No access to resources or resources not found")
        self.world.record("jupyterhub", f"auth_state of {owner['name']}")
        return reply(200, {
            "kind": "user", "name": owner["name"], "admin": False, "groups": [], "roles": ["user"],
            "server": f"/user/{owner['name']}/", "pending": None,
            "last_activity": self.world.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "auth_state": owner["auth_state"],
        })


def services(world) -> list[Service]:
    return [JupyterHub(world)]
