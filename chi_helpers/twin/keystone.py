"""Keystone v3, as far as python-chi uses it: tokens, the service catalog, projects.

Tokens are made from a password, an application credential or another token (POST /v3/auth/tokens,
the token in the `X-Subject-Token` header, 201). As Keystone does:

- an application credential is bound to its project: a request that also asks for a scope is
  refused with 401 ("Application credentials cannot request a scope"), and its token is scoped to
  that project without asking;
- a wrong secret or password is 401, with the same message whichever part was wrong;
- an unscoped token has no catalog; a scoped one lists every service of the site (region) whose
  Keystone issued it, at that site's address;
- each site has its own Keystone (twin/sites.py): an application credential belongs to the site that
  made it and is unknown elsewhere (401, as a wrong secret), and a token is taken only by its own
  site's services (401). Users and projects are federated, so they are the same at every site.

Application credentials carry roles: those given when made, else every role of the token that made it
(keystone/api/users.py `_get_roles`), and a token made from one has exactly those roles
(keystone/models/token_model.py `_get_application_credential_roles`). Keystone before 2024.2 adds no
implied role to roles given by name (the fix, keystone 26.0.0, is bug 2030061): a credential made with
`member` only has no `reader`, so Glance's image list and Nova's flavor extra specs refuse its tokens
(403). Chameleon's docs (technical/cli/authentication.rst) name exactly this and say to include
`reader`. A user's own tokens carry `member` and the `reader` it implies (keystone/cmd/bootstrap.py).

Application credentials are restricted unless made with `"unrestricted": true` (the dashboard's
"Unrestricted" box, unticked by default). A token made from a restricted one may create neither
another application credential nor a trust (403), and Blazar needs a trust to make a lease: so a
restricted credential cannot make leases. (Keystone 2023.1-2024.1, keystone/api/trusts.py
`_check_unrestricted`. Since CVE-2026-43000, Keystone 2025.1 and later refuse trusts to every
application credential unless the site sets `allow_insecure_application_credential_trust_escalation`;
the twin keeps the rule Chameleon's docs describe: tick "Unrestricted".)

Students on Chameleon's JupyterHub sign in another way: users are federated (Chameleon's Keycloak,
identity provider `chameleon`, protocol `openid`), and the hub holds each student's OIDC access token.
keystoneauth1's OidcAccessToken sends it as a bearer to the federation route
(`/v3/OS-FEDERATION/identity_providers/chameleon/protocols/openid/auth`, keystone/api/os_federation.py),
which answers an unscoped token; a project-scoped one is then asked for with the token method, and
keeps the unscoped one's expiry (keystone/auth/plugins/mapped.py handle_scoped_token). On Chameleon the
access token is checked in front of Keystone (Apache's mod_auth_openidc, by introspection): an unknown or
expired one is refused 401 before Keystone sees it (twin/keycloak.py keeps Keycloak's side). Keystone's
tokens expire (`set_lifetimes`); an expired one is unknown to Keystone, as `validate_token` makes it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from . import keycloak
from .sites import keystone_site, sites_at
from .web import Fault, Request, Service, reply

DOMAIN = {"id": "chameleon", "name": "chameleon"}  # the domain Chameleon's projects (and federated users) are in
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SERVICES = [  # (type, name, path below the twin's address)
    ("identity", "keystone", "/v3"),
    ("reservation", "blazar", "/reservation/v1"),
    ("compute", "nova", "/compute/v2.1"),
    ("network", "neutron", "/network"),
    ("image", "glance", "/image"),
]
# A project member's roles, with the one `member` implies (keystone/cmd/bootstrap.py: member implies reader).
ROLES = [{"id": "member", "name": "member"}, {"id": "reader", "name": "reader"}]
KNOWN_ROLES = ("admin", "member", "reader")  # keystone-manage bootstrap's roles (keystone/cmd/bootstrap.py)
BLAZAR_USER = "blazar"  # Blazar's service user: the trustee of every lease's trust
IDENTITY_PROVIDER, PROTOCOL = "chameleon", "openid"  # Chameleon's Keycloak, as its Keystones know it
# How long Keystone's tokens last unless a test asks otherwise. Keystone's own default is an hour ([token]
# expiration); the twin's is a day, so a rehearsal never meets it (twin/keycloak.py: Keycloak's tokens).
LIFETIMES = {"keystone_token": 24 * 3600}


def forbidden(action: str) -> Fault:
    # keystone/exception.py ForbiddenAction: the action's own full stop is kept, as Keystone does.
    return Fault(403, f"You are not authorized to perform the requested action: {action}.")


def seed(world, project: str, user: str, password: str, credential_id: str, credential_secret: str,
         unrestricted: bool = True) -> None:
    """One user, member of `project`, with a password and an application credential for that project
    at the site of `world` (see `add_site_credential` for one at another site).

    The credential is unrestricted by default: the one a headless run uses must make leases, and
    Chameleon's docs say to tick "Unrestricted" for that."""
    project_id = world.new_id().replace("-", "")
    user_id = world.new_id().replace("-", "")
    world.data["projects"][project_id] = {"id": project_id, "name": project, "domain_id": DOMAIN["id"],
                                          "enabled": True, "description": f"{project} (twin)", "parent_id": DOMAIN["id"],
                                          "is_domain": False, "tags": []}
    world.data["users"][user_id] = {"id": user_id, "name": user, "domain_id": DOMAIN["id"], "enabled": True,
                                    "password": password, "projects": [project_id]}
    add_application_credential(world, user_id, project_id, f"{user}-twin", unrestricted,
                               credential_id=credential_id, secret=credential_secret)


def add_project(world, user_name: str, project: str) -> dict:
    """Another project the user is a member of (a student in a course's project and a research one)."""
    user = next(u for u in world.data["users"].values() if u["name"] == user_name)
    project_id = world.new_id().replace("-", "")
    world.data["projects"][project_id] = {"id": project_id, "name": project, "domain_id": DOMAIN["id"],
                                          "enabled": True, "description": f"{project} (twin)", "parent_id": DOMAIN["id"],
                                          "is_domain": False, "tags": []}
    user["projects"].append(project_id)
    return world.data["projects"][project_id]


def set_lifetimes(world, keystone_token: float | None = None) -> None:
    """How many seconds the Keystone tokens issued from now on last (Keycloak's: keycloak.set_lifetimes)."""
    lifetimes = world.data.setdefault("lifetimes", dict(LIFETIMES))
    if keystone_token is not None:
        lifetimes["keystone_token"] = keystone_token


def lifetime(world, kind: str) -> float:
    return world.data.get("lifetimes", LIFETIMES)[kind]


def expired(token: dict, now: datetime) -> bool:
    """keystone/token/provider.py _is_valid_token: a token past its expiry is not found."""
    return datetime.strptime(token["expires_at"], TIME_FORMAT).replace(tzinfo=now.tzinfo) <= now


def add_application_credential(world, user_id: str, project_id: str, name: str, unrestricted: bool = False,
                               credential_id: str | None = None, secret: str | None = None,
                               roles: list[str] | None = None, site: str | None = None,
                               held: list[dict] | None = None) -> dict:
    """An application credential of `user_id` for `project_id`, made at `site` (default: the site of
    `world`) and known only there: restricted unless asked, as Keystone stores it
    (keystone/application_credential/backends/sql.py: `unrestricted` is NULL unless given), with the
    `roles` named (default: all of `held`, the roles of the token that makes it; the user's own by
    default). Names are unique per user at a site (409, keystone/common/sql/core.py handle_conflicts)."""
    credentials = world.data["application_credentials"]
    site = site or keystone_site(world)
    if any(c["user_id"] == user_id and c["name"] == name and c.get("site", site) == site
           for c in credentials.values()):
        raise Fault(409, f"Conflict occurred attempting to store application_credential - "
                         f"Duplicate entry found with name {name}.")
    credential = {"id": credential_id or world.new_id().replace("-", ""), "name": name,
                  "secret": secret or world.new_id().replace("-", ""), "user_id": user_id,
                  "project_id": project_id, "unrestricted": bool(unrestricted), "description": None,
                  "expires_at": None, "roles": credential_roles(roles, held or ROLES), "access_rules": [],
                  "site": site}
    credentials[credential["id"]] = credential
    return credential


def credential_roles(names: list[str] | None, held: list[dict]) -> list[dict]:
    """The roles a new credential gets (keystone/api/users.py `_get_roles`, as before 2024.2): the ones
    named, none implied added, each one Keystone knows (404) and the maker's token holds (400); by
    default all of the token's."""
    if not names:
        return [dict(role) for role in held]
    for name in names:
        if name not in KNOWN_ROLES:  # keystone/exception.py RoleNotFound
            raise Fault(404, f"Could not find role: {name}.")
        if name not in {role["name"] for role in held}:
            raise Fault(400, "Invalid application credential: Cannot create an application credential with "
                             "unassigned role")
    return [{"id": name, "name": name} for name in dict.fromkeys(names)]


def add_site_credential(world, site: str, name: str, unrestricted: bool = True) -> dict:
    """An application credential of the seeded user (the first), made at `site`'s Keystone."""
    user = next(iter(world.data["users"].values()))
    return add_application_credential(world, user["id"], user["projects"][0], name, unrestricted, site=site)


def has_role(token: dict, name: str) -> bool:
    """Does the token carry role `name`? What oslo.policy's `role:<name>` checks (on the token's roles only:
    implied roles count only when Keystone put them in the token)."""
    return name in {role["name"] for role in token.get("roles", [])}


def credential_of(world, token: dict) -> dict | None:
    """The application credential a token was made with, as stored now; None for any other sign-in."""
    made_with = token.get("application_credential") or {}
    return world.data["application_credentials"].get(made_with.get("id", ""))


def create_trust(world, token: dict, trustee_user_id: str, project_id: str | None, roles: list[str],
                 impersonation: bool = True, trustor_user_id: str | None = None) -> dict:
    """A trust from the token's user to `trustee_user_id`, with keystone/api/trusts.py
    TrustsResource.post's checks in its order; what Blazar's create_trust (blazar/utils/trusts.py)
    asks for with the user's token when it makes a lease."""
    credential = credential_of(world, token)
    if credential is not None and not credential.get("unrestricted"):
        raise forbidden("Using method 'application_credential' is not allowed for managing trusts.")
    if project_id and not roles:
        raise forbidden("At least one role should be specified.")
    if trustor_user_id is not None and trustor_user_id != token["user"]["id"]:
        raise forbidden("The authenticated user should match the trustor.")
    if trustee_user_id != BLAZAR_USER and trustee_user_id not in world.data["users"]:
        raise Fault(404, f"Could not find user: {trustee_user_id}.")
    trust = {"id": world.new_id().replace("-", ""), "trustor_user_id": token["user"]["id"],
             "trustee_user_id": trustee_user_id, "project_id": project_id, "impersonation": impersonation,
             "roles": [{"id": name, "name": name} for name in roles], "remaining_uses": None,
             "expires_at": None, "allow_redelegation": False, "redelegation_count": 0}
    world.data.setdefault("trusts", {})[trust["id"]] = trust
    world.record("keystone", f"trust {trust['id']} from {token['user']['name']} to {trustee_user_id}")
    return trust


def catalog(world) -> list[dict]:
    """The services of the site(s) whose Keystone `world` serves, at their address: each Chameleon
    Keystone lists its own region only."""
    entries = []
    for kind, name, path in SERVICES:
        url = world.url(path)
        endpoints = [{"id": f"{name}-{region}", "interface": interface, "region": region, "region_id": region,
                      "url": url} for region in sites_at(world) for interface in ("public", "internal")]
        entries.append({"id": name, "type": kind, "name": name, "endpoints": endpoints})
    return entries


# keystone/api/os_federation.py OSFederationAuthResource: GET and POST alike.
FEDERATION_ROUTE = "/OS-FEDERATION/identity_providers/(?P<idp>[^/]+)/protocols/(?P<protocol>[^/]+)/auth"


class Keystone(Service):
    prefix = "/v3"
    name = "keystone"
    routes = [
        ("GET", "/", "version"),
        ("POST", "/auth/tokens", "issue"),
        ("GET", "/auth/tokens", "validate"),
        ("HEAD", "/auth/tokens", "validate"),
        ("DELETE", "/auth/tokens", "revoke"),
        ("GET", "/auth/projects", "auth_projects"),
        ("GET", "/users/(?P<user>[^/]+)/projects", "user_projects"),
        ("GET", "/projects", "list_projects"),
        ("GET", "/projects/(?P<project>[^/]+)", "get_project"),
        ("POST", "/users/(?P<user>[^/]+)/application_credentials", "make_application_credential"),
        ("POST", "/OS-TRUST/trusts", "make_trust"),
        ("POST", FEDERATION_ROUTE, "federated_sign_in"),
        ("GET", FEDERATION_ROUTE, "federated_sign_in"),
    ]

    def error_body(self, status, message):
        titles = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
        return {"error": {"code": status, "message": message, "title": titles.get(status, "Error")}}

    def version(self, request: Request):
        return reply(200, {"version": {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self.world.url("/v3/")}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }})

    # --- tokens ---------------------------------------------------------------------------------

    def _user(self, identity: dict) -> tuple[dict, dict | None, dict | None]:
        """(user, the application credential it signs in with, the token it signs in with) for the
        identity part of a token request."""
        methods = identity.get("methods") or []
        refused = Fault(401, "The request you have made requires authentication.")
        if self.world.take_fault("keystone-refuses"):
            raise refused
        users = self.world.data["users"]
        if methods == ["application_credential"]:
            given = identity.get("application_credential") or {}
            credentials = self.world.data["application_credentials"]
            credential = credentials.get(given.get("id", ""))
            if credential is None and given.get("name"):
                owner = given.get("user") or {}
                credential = next((c for c in credentials.values() if c["name"] == given["name"]
                                   and owner.get("id") in (None, c["user_id"])
                                   and owner.get("name") in (None, users[c["user_id"]]["name"])), None)
            if credential is None or credential["secret"] != given.get("secret") or not self._made_here(credential):
                raise refused
            return users[credential["user_id"]], credential, None
        if methods == ["password"]:
            given = (identity.get("password") or {}).get("user") or {}
            user = users.get(given.get("id", "")) or next(
                (u for u in users.values() if u["name"] == given.get("name")), None)
            if user is None or user["password"] != given.get("password"):
                raise refused
            return user, None, None
        if methods == ["token"]:
            old = self._live_token((identity.get("token") or {}).get("id", ""))
            return users[old["user"]["id"]], credential_of(self.world, old), old
        raise Fault(401, f"Unsupported authentication method: {', '.join(methods) or 'none'}")

    def _made_here(self, credential: dict) -> bool:
        """Was the credential made at this Keystone's site? Another site's Keystone does not know it."""
        return credential.get("site", keystone_site(self.world)) in sites_at(self.world)

    def _live_token(self, token_id: str) -> dict:
        """A token this Keystone still knows: unknown, expired and other sites' ones are not found (404)."""
        token = self.world.data["tokens"].get(token_id)
        if token is None or expired(token, self.world.now()) or token.get("site") not in sites_at(self.world):
            raise Fault(404, "Could not find token.")
        return token

    def _project(self, scope: dict) -> dict:
        wanted = scope.get("project") or {}
        projects = self.world.data["projects"].values()
        if wanted.get("id"):
            found = [p for p in projects if p["id"] == wanted["id"]]
        else:
            domain = wanted.get("domain") or {}
            found = [p for p in projects if p["name"] == wanted.get("name")
                     and domain.get("name", DOMAIN["name"]) == DOMAIN["name"]]
        if not found:
            raise Fault(401, f"Could not find project: {wanted.get('id') or wanted.get('name')}.")
        return found[0]

    def issue(self, request: Request):
        auth = request.json().get("auth") or {}
        identity = auth.get("identity") or {}
        user, credential, old = self._user(identity)
        bound = credential["project_id"] if credential else None
        scope = auth.get("scope")
        if bound and scope:
            # What Keystone does: an application credential carries its own scope and may not ask for one.
            raise Fault(401, "Application credentials cannot request a scope.")
        project = self.world.data["projects"][bound] if bound else (self._project(scope) if scope else None)
        if project and project["id"] not in user["projects"]:
            raise Fault(401, f"User {user['id']} has no access to project {project['id']}")
        methods = identity.get("methods")
        if old is not None:
            # keystone/auth/plugins/token.py: the method names carry on, and so does the expiry (rescoping
            # may not extend a session); a federated token stays federated (mapped.py handle_scoped_token).
            methods = list(dict.fromkeys([*methods, *old["methods"]]))
        token_id, body = self._store_token(user, methods, project, credential, bound,
                                           expires_at=old["expires_at"] if old else None,
                                           federation=(old or {}).get("user", {}).get("OS-FEDERATION"))
        self.world.record("keystone", f"token for {user['name']}" + (f" in {project['name']}" if project else " (unscoped)"))
        return reply(201, {"token": body}, X_Subject_Token=token_id)

    def _store_token(self, user: dict, methods: list, project: dict | None = None, credential: dict | None = None,
                     bound: str | None = None, expires_at: str | None = None,
                     federation: dict | None = None) -> tuple[str, dict]:
        """A new token, kept and rendered as keystone/common/render_token.py does."""
        now = self.world.now().replace(microsecond=0)  # Keystone renders whole seconds (".000000Z")
        self._forget_expired(now)
        token_id = self.world.new_id().replace("-", "")
        shown_user = {"id": user["id"], "name": user["name"], "domain": DOMAIN, "password_expires_at": None}
        if federation:  # render_token: a federated user's token names its IdP and has no password expiry
            shown_user["OS-FEDERATION"] = federation
            del shown_user["password_expires_at"]
        expires_at = expires_at or (now + timedelta(seconds=lifetime(self.world, "keystone_token"))).strftime(TIME_FORMAT)
        body = {
            "methods": methods,
            "user": shown_user,
            "issued_at": now.strftime(TIME_FORMAT),
            "expires_at": expires_at,
            "audit_ids": [token_id[:22]],
        }
        if project:
            body["project"] = {"id": project["id"], "name": project["name"], "domain": DOMAIN}
            # token_model.py: a credential's token has the credential's roles, no implied ones added
            body["roles"] = [dict(role) for role in credential["roles"]] if credential else list(ROLES)
            body["catalog"] = catalog(self.world)
            body["is_domain"] = False
        if credential:  # keystone/common/render_token.py: restricted is "not unrestricted"
            body["application_credential"] = {"id": credential["id"], "name": credential["name"],
                                              "restricted": not credential.get("unrestricted")}
        self.world.data["tokens"][token_id] = {**body, "bound_project": bound, "site": keystone_site(self.world)}
        return token_id, body

    def _forget_expired(self, now: datetime) -> None:
        """Drop expired tokens, so that no service of the twin takes one (Keystone would not validate it)."""
        tokens = self.world.data["tokens"]
        for token_id in [t for t, token in tokens.items() if expired(token, now)]:
            del tokens[token_id]

    def federated_sign_in(self, request: Request):
        """keystone/api/os_federation.py OSFederationAuthResource._auth: an unscoped token for the user the
        identity provider's access token stands for (keystone/auth/plugins/mapped.py handle_unscoped_token).
        The access token is checked first, as mod_auth_openidc does in front of Keystone on Chameleon."""
        idp, protocol = request.param("idp"), request.param("protocol")
        if idp != IDENTITY_PROVIDER:  # keystone/exception.py IdentityProviderNotFound
            raise Fault(404, f"Could not find Identity Provider: {idp}.")
        if protocol != PROTOCOL:  # FederatedProtocolNotFound
            raise Fault(404, f"Could not find federated protocol {protocol} for Identity Provider: {idp}.")
        bearer = request.headers.get("authorization", "")
        access_token = bearer[len("bearer "):].strip() if bearer.lower().startswith("bearer ") else ""
        user = keycloak.userinfo(self.world, access_token) if access_token else None
        if user is not None and self.world.take_fault("keystone-refuses"):
            user = None
        if user is None or not user.get("enabled", True):
            # RFC 6750 section 3, as mod_auth_openidc answers; the body as Keystone's Unauthorized.
            why = "an access token is required" if not access_token else "the access token is expired or unknown"
            self.world.record("keystone", f"federated sign-in refused: {why}")
            raise Fault(401, "The request you have made requires authentication.",
                        {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{why}"'})
        federation = {"groups": [], "identity_provider": {"id": idp}, "protocol": {"id": protocol}}
        token_id, body = self._store_token(user, [protocol], federation=federation)
        self.world.record("keystone", f"federated token for {user['name']} ({idp}, {protocol})")
        return reply(201, {"token": body}, X_Subject_Token=token_id)

    def validate(self, request: Request):
        request.token()
        subject_id = request.headers.get("x-subject-token", "")
        subject = self._live_token(subject_id)
        shown = {k: v for k, v in subject.items() if k not in ("bound_project", "site")}
        return reply(200, {"token": shown}, X_Subject_Token=subject_id)

    def revoke(self, request: Request):
        request.token()
        self.world.data["tokens"].pop(request.headers.get("x-subject-token", ""), None)
        return reply(204)

    # --- projects -------------------------------------------------------------------------------

    def _visible(self, request: Request) -> list[dict]:
        user = self.world.data["users"][request.token()["user"]["id"]]
        return [self.world.data["projects"][p] for p in user["projects"]]

    def _page(self, projects: list[dict], request: Request):
        name = request.arg("name")
        shown = [{**p, "links": {"self": self.world.url(f"/v3/projects/{p['id']}")}}
                 for p in projects if name in (None, p["name"])]
        return reply(200, {"projects": shown, "links": {"self": self.world.url("/v3/projects"), "next": None,
                                                        "previous": None}})

    def auth_projects(self, request: Request):
        return self._page(self._visible(request), request)

    def user_projects(self, request: Request):
        if request.token()["user"]["id"] != request.param("user"):
            raise Fault(403, "You are not authorized to perform the requested action.")
        return self._page(self._visible(request), request)

    def list_projects(self, request: Request):
        return self._page(self._visible(request), request)

    def get_project(self, request: Request):
        for project in self._visible(request):
            if project["id"] == request.param("project"):
                return reply(200, {"project": {**project, "links": {"self": self.world.url(f"/v3/projects/{project['id']}")}}})
        raise Fault(404, f"Could not find project: {request.param('project')}.")


    # --- application credentials and trusts ---------------------------------------------------------

    def make_application_credential(self, request: Request):
        """keystone/api/users.py UserAppCredListCreateResource.post."""
        token = request.token()
        given = request.json().get("application_credential") or {}
        if not isinstance(given.get("name"), str) or not given["name"]:
            raise Fault(400, "Invalid input for field 'name': 'name' is a required property")
        credential = credential_of(self.world, token)
        if credential is not None and not credential.get("unrestricted"):
            raise forbidden("Using method 'application_credential' is not allowed for managing additional "
                            "application credentials.")
        if token["user"]["id"] != request.param("user"):
            raise forbidden("Cannot create an application credential for another user.")
        project = (token.get("project") or {}).get("id")
        if not project:  # a limit of the twin: Keystone would make one bound to no project
            raise Fault(400, "the twin makes application credentials from project-scoped tokens only")
        roles = [role.get("name") or role.get("id") for role in given.get("roles") or []]
        made = add_application_credential(self.world, token["user"]["id"], project, given["name"],
                                          given.get("unrestricted") is True, secret=given.get("secret"), roles=roles,
                                          held=token.get("roles"))
        self.world.record("keystone", f"application credential {made['name']} "
                                      f"({'unrestricted' if made['unrestricted'] else 'restricted'})")
        shown = {k: v for k, v in made.items() if k not in ("user_id", "site")}
        shown["links"] = {"self": self.world.url(f"/v3/users/{made['user_id']}/application_credentials/{made['id']}")}
        return reply(201, {"application_credential": shown})

    def make_trust(self, request: Request):
        """keystone/api/trusts.py TrustsResource.post (the checks Blazar's trust meets)."""
        token = request.token()
        given = request.json().get("trust") or {}
        roles = [role.get("name") or role.get("id") for role in given.get("roles") or []]
        trust = create_trust(self.world, token, given.get("trustee_user_id", ""), given.get("project_id"), roles,
                             bool(given.get("impersonation")), trustor_user_id=given.get("trustor_user_id", ""))
        return reply(201, {"trust": {**trust, "links": {"self": self.world.url(f"/v3/OS-TRUST/trusts/{trust['id']}")}}})


def services(world) -> list[Service]:
    return [Keystone(world)]
