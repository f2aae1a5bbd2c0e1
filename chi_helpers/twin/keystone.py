"""Keystone v3, as far as python-chi uses it: tokens, the service catalog, projects.

Tokens are made from a password, an application credential or another token (POST /v3/auth/tokens,
the token in the `X-Subject-Token` header, 201). As Keystone does:

- an application credential is bound to its project: a request that also asks for a scope is
  refused with 401 ("Application credentials cannot request a scope"), and its token is scoped to
  that project without asking;
- a wrong secret or password is 401, with the same message whichever part was wrong;
- an unscoped token has no catalog; a scoped one lists every service in every region.

Application credentials are restricted unless made with `"unrestricted": true` (the dashboard's
"Unrestricted" box, unticked by default). A token made from a restricted one may create neither
another application credential nor a trust (403), and Blazar needs a trust to make a lease: so a
restricted credential cannot make leases. (Keystone 2023.1-2024.1, keystone/api/trusts.py
`_check_unrestricted`. Since CVE-2026-43000, Keystone 2025.1 and later refuse trusts to every
application credential unless the site sets `allow_insecure_application_credential_trust_escalation`;
the twin keeps the rule Chameleon's docs describe: tick "Unrestricted".)
"""

from __future__ import annotations

from datetime import timedelta

from .web import Fault, Request, Service, reply

DOMAIN = {"id": "chameleon", "name": "chameleon"}  # the domain Chameleon's projects are in
SERVICES = [  # (type, name, path below the twin's address)
    ("identity", "keystone", "/v3"),
    ("reservation", "blazar", "/reservation/v1"),
    ("compute", "nova", "/compute/v2.1"),
    ("network", "neutron", "/network"),
    ("image", "glance", "/image"),
]
REGIONS = ["CHI@TACC", "CHI@UC", "KVM@TACC"]
ROLES = [{"id": "member", "name": "member"}, {"id": "reader", "name": "reader"}]  # a project member's
BLAZAR_USER = "blazar"  # Blazar's service user: the trustee of every lease's trust


def forbidden(action: str) -> Fault:
    # keystone/exception.py ForbiddenAction: the action's own full stop is kept, as Keystone does.
    return Fault(403, f"You are not authorized to perform the requested action: {action}.")


def seed(world, project: str, user: str, password: str, credential_id: str, credential_secret: str,
         unrestricted: bool = True) -> None:
    """One user, member of `project`, with a password and an application credential for that project.

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


def add_application_credential(world, user_id: str, project_id: str, name: str, unrestricted: bool = False,
                               credential_id: str | None = None, secret: str | None = None) -> dict:
    """An application credential of `user_id` for `project_id`: restricted unless asked, as Keystone
    stores it (keystone/application_credential/backends/sql.py: `unrestricted` is NULL unless given).
    Names are unique per user (409, keystone/common/sql/core.py handle_conflicts)."""
    credentials = world.data["application_credentials"]
    if any(c["user_id"] == user_id and c["name"] == name for c in credentials.values()):
        raise Fault(409, f"Conflict occurred attempting to store application_credential - "
                         f"Duplicate entry found with name {name}.")
    credential = {"id": credential_id or world.new_id().replace("-", ""), "name": name,
                  "secret": secret or world.new_id().replace("-", ""), "user_id": user_id,
                  "project_id": project_id, "unrestricted": bool(unrestricted), "description": None,
                  "expires_at": None, "roles": list(ROLES), "access_rules": []}
    credentials[credential["id"]] = credential
    return credential


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
    entries = []
    for kind, name, path in SERVICES:
        url = world.url(path)
        endpoints = [{"id": f"{name}-{region}", "interface": interface, "region": region, "region_id": region,
                      "url": url} for region in REGIONS for interface in ("public", "internal")]
        entries.append({"id": name, "type": kind, "name": name, "endpoints": endpoints})
    return entries


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

    def _user(self, identity: dict) -> tuple[dict, dict | None]:
        """(user, the application credential it signs in with, if any) for the identity part of a token request."""
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
            if credential is None or credential["secret"] != given.get("secret"):
                raise refused
            return users[credential["user_id"]], credential
        if methods == ["password"]:
            given = (identity.get("password") or {}).get("user") or {}
            user = users.get(given.get("id", "")) or next(
                (u for u in users.values() if u["name"] == given.get("name")), None)
            if user is None or user["password"] != given.get("password"):
                raise refused
            return user, None
        if methods == ["token"]:
            old = self.world.data["tokens"].get((identity.get("token") or {}).get("id", ""))
            if old is None:
                raise Fault(404, "Could not find token.")
            return users[old["user"]["id"]], credential_of(self.world, old)
        raise Fault(401, f"Unsupported authentication method: {', '.join(methods) or 'none'}")

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
        user, credential = self._user(auth.get("identity") or {})
        bound = credential["project_id"] if credential else None
        scope = auth.get("scope")
        if bound and scope:
            # What Keystone does: an application credential carries its own scope and may not ask for one.
            raise Fault(401, "Application credentials cannot request a scope.")
        project = self.world.data["projects"][bound] if bound else (self._project(scope) if scope else None)
        if project and project["id"] not in user["projects"]:
            raise Fault(401, f"User {user['id']} has no access to project {project['id']}")
        now = self.world.now()
        token_id = self.world.new_id().replace("-", "")
        body = {
            "methods": (auth.get("identity") or {}).get("methods"),
            "user": {"id": user["id"], "name": user["name"], "domain": DOMAIN, "password_expires_at": None},
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "expires_at": (now + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "audit_ids": [token_id[:22]],
        }
        if project:
            body["project"] = {"id": project["id"], "name": project["name"], "domain": DOMAIN}
            body["roles"] = list(ROLES)
            body["catalog"] = catalog(self.world)
            body["is_domain"] = False
        if credential:  # keystone/common/render_token.py: restricted is "not unrestricted"
            body["application_credential"] = {"id": credential["id"], "name": credential["name"],
                                              "restricted": not credential.get("unrestricted")}
        self.world.data["tokens"][token_id] = {**body, "bound_project": bound}
        self.world.record("keystone", f"token for {user['name']}" + (f" in {project['name']}" if project else " (unscoped)"))
        return reply(201, {"token": body}, X_Subject_Token=token_id)

    def validate(self, request: Request):
        request.token()
        subject = self.world.data["tokens"].get(request.headers.get("x-subject-token", ""))
        if subject is None:
            raise Fault(404, "Could not find token.")
        shown = {k: v for k, v in subject.items() if k != "bound_project"}
        return reply(200, {"token": shown}, X_Subject_Token=request.headers["x-subject-token"])

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
        made = add_application_credential(self.world, token["user"]["id"], project, given["name"],
                                          given.get("unrestricted") is True, secret=given.get("secret"))
        self.world.record("keystone", f"application credential {made['name']} "
                                      f"({'unrestricted' if made['unrestricted'] else 'restricted'})")
        shown = {k: v for k, v in made.items() if k != "user_id"}
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
