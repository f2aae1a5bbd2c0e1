"""Before the first python-chi call: can this kernel sign in to Chameleon, in which project, with which key pair?

python-chi reads the `OS_*` environment once, at its first import, so an RC file is loaded here,
before that import (and python-chi's context is re-read if it was imported already). Then:

- a way to sign in: Chameleon's JupyterHub session, an application credential, a password or a
  token, from the environment or the RC file;
- a project: an application credential is bound to its own (and Keystone refuses a project-scoped
  token for one, so no project is set); otherwise the `project` parameter, the choice an earlier
  notebook kept (`CHOICE_FILE`), `OS_PROJECT_NAME`, or, when a person has the notebook open,
  python-chi's project widget. Chameleon's hub sets `OS_PROJECT_NAME` to the first of the student's
  projects in alphabetical order, whichever that is: `verify` lists the student's projects and says which one pays,
  and before a lease is made (`new_lease`) it stops a student in several projects who has not chosen;
- for the notebooks that make or reach the server, the key pair python-chi creates it with
  (`OS_KEYPAIR_PUBLIC_KEY`) and logs in with (`OS_KEYPAIR_PRIVATE_KEY`); the hub provides one.

Anything missing stops here with what to set, before a request is sent.

On Chameleon's JupyterHub there is no RC file and no credential: the hub starts each server with
`JUPYTERHUB_API_URL`, `JUPYTERHUB_API_TOKEN`, `JUPYTERHUB_USER` and the OS_* of an OIDC access-token
sign-in (`OS_AUTH_TYPE=v3oidcaccesstoken`, `OS_ACCESS_TOKEN`, `OS_IDENTITY_PROVIDER=chameleon`,
`OS_PROTOCOL=openid`, CHI@UC's `OS_AUTH_URL`: jupyterhub-chameleon authenticator/openstack_oauth.py).
python-chi asks the hub's API for the access token whenever it needs one (chi/jupyterhub.py) and trades
it for a Keystone token at Keystone's federation route. When the hub refuses, python-chi only logs why;
`verify` says it.

python-chi 1.2.10 also expects the hub's answer to say when the token expires (`expires_at`), and the
hub drops that field each time it renews a student's sign-in, hourly (oauthenticator's refresh_user
stores no `expires_at`). python-chi then keeps None and fails at its next look at the token with a
TypeError (chi/context.py `_SessionWithAccessTokenRefresh`). `check` mends that for the kernel
(`_mend_hub_expiry`): the expiry is read from the access token itself, a JWT, as the hub does at sign-in.

Each Chameleon site is its own OpenStack with its own Keystone: an application credential works only at
the site whose dashboard made it (its RC file's OS_REGION_NAME and OS_AUTH_URL say which). When a site
refuses one made elsewhere, `verify` names both sites and where to get the right RC file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chi_helpers.chameleon import openstack_rc

HUB_SESSION = "Chameleon's JupyterHub session"
# Where a student's choice of project is kept for the other notebooks: at the top of their copy of the series.
CHOICE_FILE = Path(__file__).resolve().parents[2] / "chameleon-project.txt"
HUB_DEFAULT = "the hub's default: the first of your projects in alphabetical order"
# What restarting the Jupyter server does: the hub starts it again with a new API token and the OS_*
# of the student's current sign-in.
RESTART_HELP = ("restart your Jupyter server from the hub: File > Hub Control Panel > Stop My Server, then "
                "Start My Server (the hub gives the new server its API token and OS_* variables)")
# What keystoneauth1's v3oidcaccesstoken loader requires besides the token (loading/identity.py), with
# the values Chameleon's hub gives them.
FEDERATION = {"OS_IDENTITY_PROVIDER": "chameleon", "OS_PROTOCOL": "openid"}
RC_HELP = (openstack_rc.CREDENTIAL_HELP + ", and give a run its path with --rc-file (or `source` it in the shell "
           "that starts Jupyter)")


class LoginError(RuntimeError):
    """Chameleon cannot be signed in to as things are; the message says what to set."""


@dataclass(frozen=True)
class Login:
    method: str  # how python-chi will sign in
    source: str  # where that came from
    project: str | None  # what to give context.use_project (None: set none)
    choose_project: bool  # no project known: a person picks one with python-chi's widget
    key_pair: str | None  # "<name>: <public key file>", when asked for
    project_source: str = ""  # where `project` came from

    def describe(self) -> str:
        project = (f"{self.project} ({self.project_source})" if self.project
                   else ("chosen with the widget below" if self.choose_project else "the one the credential belongs to"))
        method = self.method
        if method == HUB_SESSION:
            method += " (the hub's access token, through Keystone's federation route)"
        lines = [f"sign in: {method}, from {self.source}", f"project: {project}"]
        if self.key_pair:
            lines.append(f"key pair: {self.key_pair}")
        return "\n".join(lines)


def person_at_the_notebook() -> bool:
    """True in a kernel that a Jupyter server started for an open notebook (it sets JPY_SESSION_NAME);
    False under papermill or another headless runner, where no one can answer a widget."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _method(env: dict) -> str:
    auth_type = env.get("OS_AUTH_TYPE", "").lower()
    has = lambda *keys: all(env.get(k) for k in keys)  # noqa: E731
    if auth_type == "v3applicationcredential" or (not auth_type and has("OS_APPLICATION_CREDENTIAL_ID")):
        if has("OS_APPLICATION_CREDENTIAL_SECRET") and (has("OS_APPLICATION_CREDENTIAL_ID")
                                                        or has("OS_APPLICATION_CREDENTIAL_NAME", "OS_USERNAME")):
            return "application credential"
        raise LoginError("the application credential is incomplete: it needs OS_APPLICATION_CREDENTIAL_ID and "
                         f"OS_APPLICATION_CREDENTIAL_SECRET. Its RC file has both: {RC_HELP}")
    if auth_type == "v3oidcaccesstoken":
        return _access_token_method(env)
    if auth_type in ("password", "v3password", "v3oidcpassword") or (not auth_type and has("OS_PASSWORD")):
        if has("OS_USERNAME", "OS_PASSWORD"):
            return "user name and password"
        raise LoginError("password sign-in needs OS_USERNAME and OS_PASSWORD; a headless run is simpler with an "
                         f"application credential: {RC_HELP}")
    if auth_type in ("token", "v3token") and env.get("OS_TOKEN"):
        return "a Keystone token"
    raise LoginError("no Chameleon credentials here: no RC file loaded (--rc-file), and no OS_* variables to sign in with. "
                     f"On Chameleon's JupyterHub they come with your session; elsewhere {RC_HELP}.")


def _access_token_method(env: dict) -> str:
    """An OIDC access token: the hub's session when JUPYTERHUB_API_URL is set, else one given as OS_ACCESS_TOKEN."""
    missing = [key for key in ("OS_ACCESS_TOKEN", *FEDERATION) if not env.get(key)]
    if env.get("JUPYTERHUB_API_URL"):
        # python-chi asks the hub for the token with these (chi/jupyterhub.py); keystoneauth needs the rest.
        missing = [key for key in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER") if not env.get(key)] + missing
        if missing:
            raise LoginError(f"this Jupyter server lacks {', '.join(missing)}, which Chameleon's JupyterHub sets "
                             f"when it starts a server: {RESTART_HELP}.")
        return HUB_SESSION
    if "OS_ACCESS_TOKEN" in missing:
        raise LoginError("OS_AUTH_TYPE asks for an access token, but there is none (OS_ACCESS_TOKEN): on Chameleon's "
                         f"JupyterHub {RESTART_HELP}; elsewhere {RC_HELP}")
    if missing:
        wanted = " and ".join(f"{key}={FEDERATION[key]}" for key in missing)
        raise LoginError(f"an access token signs in through Keystone's federation route, which needs {wanted} "
                         "(Chameleon's identity provider and protocol)")
    return "an access token"


def _key_pair(env: dict) -> str:
    public, private = env.get("OS_KEYPAIR_PUBLIC_KEY", ""), env.get("OS_KEYPAIR_PRIVATE_KEY", "")
    name = env.get("OS_KEYPAIR_NAME") or (f"{env['USER']}-jupyter" if env.get("USER") else "")
    problems = []
    if not public or not Path(public).expanduser().is_file():
        problems.append(f"OS_KEYPAIR_PUBLIC_KEY ({public or 'not set'}) is not a public key file")
    if not private or not Path(private).expanduser().is_file():
        problems.append(f"OS_KEYPAIR_PRIVATE_KEY ({private or 'not set'}) is not a private key file")
    if not name:
        problems.append("no key pair name: set OS_KEYPAIR_NAME (or USER)")
    elif not re.fullmatch(r"[A-Za-z0-9_\- ]+", name):
        # Nova (before API 2.92, which python-chi's key pair calls use) takes only these characters.
        problems.append(f"the key pair name {name!r} may hold only letters, digits, '-', '_' and spaces: "
                        "set OS_KEYPAIR_NAME to such a name")
    if problems:
        raise LoginError(
            "python-chi needs an SSH key pair to create the server and log in to it: " + "; ".join(problems) + ". "
            "Chameleon's JupyterHub sets both to ~/work/.ssh/id_rsa[.pub]; for a headless run make one "
            "(ssh-keygen -t rsa -f ~/.ssh/id_rsa) and add export OS_KEYPAIR_PRIVATE_KEY=... and "
            "export OS_KEYPAIR_PUBLIC_KEY=... to the RC file."
        )
    return f"{name}: {public}"


def check(rc_file: str = "", project: str = "", need_key_pair: bool = False) -> Login:
    """Load `rc_file` (if any) into the environment, then check sign-in, project and key pair."""
    source = "the OS_* environment"
    loaded = bool(rc_file)
    if rc_file:
        try:
            openstack_rc.load(rc_file)
        except (FileNotFoundError, ValueError) as error:
            raise LoginError(f"rc_file: {error}") from None
        source = f"rc_file {rc_file}"
    elif os.environ.get("JUPYTERHUB_API_URL"):
        source = "Chameleon's JupyterHub"
    env = dict(os.environ)
    method = _method(env)
    chosen, choose, project_source = None, False, ""
    if method != "application credential":  # one is bound to its project; a project scope would be refused
        for value, where in ((project, "set in the parameters cell"),
                             (remembered_project(), f"your choice, kept in {CHOICE_FILE.name}"),
                             (env.get("OS_PROJECT_NAME"), HUB_DEFAULT if method == HUB_SESSION else "OS_PROJECT_NAME")):
            if value:
                chosen, project_source = value, where
                break
        choose = chosen is None and not env.get("OS_PROJECT_ID")
        if choose and not person_at_the_notebook():
            raise LoginError("no project is set, and no one is at this notebook to pick one from the widget: set "
                             "project = 'CHI-123456' (your project's name) in the parameters cell, or OS_PROJECT_NAME")
    login = Login(method, source, chosen, choose, _key_pair(env) if need_key_pair else None, project_source)
    if loaded and "chi.context" in sys.modules:
        sys.modules["chi.context"].reset()  # imported before this: have it read the environment again
    if method == HUB_SESSION:
        _mend_hub_expiry()
    return login


def remembered_project() -> str:
    """The project an earlier notebook of this copy was told to use on the hub ("" for none). Only a hub
    session keeps one: a headless run names its project for every notebook."""
    if not _hub_session():
        return ""
    try:
        return CHOICE_FILE.read_text().strip()
    except OSError:
        return ""


def remember_project(project: str) -> bool:
    """Keep `project` for the other notebooks of this copy (on the hub); True when that changed what was kept."""
    if not _hub_session() or remembered_project() == project:
        return False
    CHOICE_FILE.write_text(project + "\n")
    return True


def use_project(project: str = "") -> Login:
    """A notebook's sign-in: check the credentials this kernel has, then `context.use_project(project)`,
    or python-chi's drop-down of your projects when `project` is "" and a person is at the notebook.
    An application credential brings its own project (Keystone refuses another scope for it)."""
    global _signed_in
    account = check("", project)
    print(account.describe())
    from chi import context

    if account.project:
        context.use_project(account.project)
        if project and remember_project(project):
            print(f"(kept in {CHOICE_FILE}: the other notebooks use it when their project is \"\")")
    elif account.choose_project:
        context.choose_project()
    _signed_in = account
    return account


def follow_site_list(site: str) -> None:
    """After `context.use_site(site)` (`verify` calls it): sign in where the site list says, when it is not
    Chameleon's.

    python-chi reads the list from CHI_RESOURCE_API_URL, but replaces KVM@TACC's entry with
    Chameleon's real address whatever the list says. With a list of its own (a rehearsal against
    the twin), this sets `auth_url` from that list again. On Chameleon (no CHI_RESOURCE_API_URL)
    it does nothing.
    """
    url = os.environ.get("CHI_RESOURCE_API_URL")
    if not url:
        return
    from chi import context

    web = _read_site_list(url).get(site)
    if web is None:
        raise LoginError(f"site {site!r} is not in the site list at {url}: set site to one of its names")
    context.set("auth_url", f"{web}:5000/v3")


def sign_in(rc_file: str = "", project: str = "", site: str = "CHI@TACC", need_key_pair: bool = False,
            say=print) -> Login:
    """What a notebook's sign-in cell does, for a process with no notebook (the CLI's runs and release):
    check, then set python-chi's project and site."""
    global _signed_in
    account = check(rc_file, project, need_key_pair)
    if account.choose_project:
        raise LoginError("no project is set: pass --project CHI-123456 (your project's name), or set OS_PROJECT_NAME")
    _signed_in = account
    say(account.describe())
    from chi import context

    if account.project:
        context.use_project(account.project)
    context.use_site(site)
    verify()
    return account


_signed_in: Login | None = None  # the last `use_project` of this kernel


def verify(need_key_pair: bool = False, new_lease: bool = False) -> None:
    """Ask Keystone for a token now, so that refused credentials stop here, in a sentence, and not in
    the middle of the first reservation or server call. With `need_key_pair`, first check the SSH key
    pair python-chi makes the server with and logs in with. Then, unless an application credential
    brings its project, list the user's projects and say which one pays; with `new_lease` (the notebook
    that reserves), stop a user in several projects whose project is only the hub's default."""
    from chi import context

    if need_key_pair:
        print(f"key pair: {_key_pair(dict(os.environ))}")
    if context.get("region_name"):
        follow_site_list(context.get("region_name"))
    with hub_refusals() as refusals:
        try:
            context.session().get_project_id()
            projects = [] if _bound_to_its_project() else sorted(context.list_projects())
        except Exception as error:
            reason = _why_refused(error, refusals.reasons)
            if reason is None:
                raise
            raise LoginError(reason) from None
    if projects:
        _say_who_pays(context.get("project_name"), projects, new_lease)


def _bound_to_its_project() -> bool:
    return _method(dict(os.environ)) == "application credential"


def _say_who_pays(project: str | None, projects: list[str], new_lease: bool) -> None:
    source = _signed_in.project_source if _signed_in and _signed_in.project == project else ""
    others = [name for name in projects if name != project]
    if len(projects) == 1:
        print(f"project {project} pays for what these notebooks reserve (your only project)")
        return
    print(f"project {project} pays for what these notebooks reserve; your projects: {', '.join(projects)}")
    if new_lease and source == HUB_DEFAULT:
        raise LoginError(
            f"you are a member of {len(projects)} projects ({', '.join(projects)}), and nobody chose one: the hub "
            f"names {project}, the first in alphabetical order, which is not always the course's. Nothing is reserved yet. Set "
            f"project = '{project}' (or '{others[0]}') in the parameters cell and run the notebook again; the other "
            f"notebooks use your choice (it is kept in {CHOICE_FILE.name}).")


def _mend_hub_expiry() -> None:
    """Give python-chi the access token's expiry when the hub's answer lacks it (see the module's notes):
    the JWT's own `exp`, or, for a token that is no JWT, "now", so that python-chi asks the hub again at
    its next need instead of failing. Done once per kernel."""
    import chi.jupyterhub as hub

    if getattr(hub.refresh_access_token, "mended", False):
        return
    original = hub.refresh_access_token

    def refresh_access_token():
        access_token, expires_at = original()
        if expires_at is None:
            expires_at = token_expiry(access_token) or time.time()
            if not refresh_access_token.said:
                print("(the hub's answer says nothing of when your access token expires, as after each of its hourly "
                      "renewals, and python-chi 1.2.10 fails on that: the series reads the expiry from the token)")
                refresh_access_token.said = True
        return access_token, expires_at

    refresh_access_token.mended, refresh_access_token.said = True, False
    refresh_access_token.original = original
    hub.refresh_access_token = refresh_access_token


def token_expiry(token: str) -> float | None:
    """The `exp` of a JWT, read without checking its signature (the hub's authenticator reads it so)."""
    import base64
    import json

    try:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _hub_token_expired_at() -> float | None:
    """When the access token the hub holds for this student expired, if it has; None when it has not, or
    the hub cannot be asked."""
    try:
        import chi.jupyterhub as hub

        token, _ = hub.refresh_access_token()
    except Exception:  # the hub's refusal is said elsewhere
        return None
    expiry = token_expiry(token)
    return expiry if expiry is not None and expiry <= time.time() else None


def _why_refused(error: Exception, hub_reasons: list[str]) -> str | None:
    """What went wrong and what to do, for the errors a sign-in meets; None for any other error."""
    from chi import context
    from keystoneauth1 import exceptions

    if hub_reasons:  # python-chi got no access token from the hub: it sent none (or a stale one)
        return _hub_refused(hub_reasons[-1])
    if isinstance(error, exceptions.Unauthorized) and _hub_session():
        expired = _hub_token_expired_at()
        if expired is not None:
            when = time.strftime("%H:%M UTC", time.gmtime(expired))
            return (f"Keystone refused the access token your hub session holds (401): it expired at {when}, and the "
                    "hub renews it only once an hour, so it may hand out the expired one for a while yet. Log out "
                    "of the hub (File > Log Out) and log in again (a new sign-in brings new tokens), then rerun "
                    "this notebook from the top.")
        return ("Keystone refused the access token of your hub session (401): your sign-in to Chameleon has "
                "expired or was revoked. Log out of the hub (File > Log Out), log in again, then rerun this "
                "notebook from the top. With a project name set, check that it is yours.")
    if isinstance(error, exceptions.Unauthorized) and (mismatch := _site_mismatch()):
        return mismatch
    if isinstance(error, exceptions.Unauthorized):
        return ("Keystone refused these credentials (401). An application credential may have expired or been "
                f"deleted, or its secret mistyped: {RC_HELP}. With a project name set, check that it is yours.")
    if isinstance(error, exceptions.ConnectFailure):
        return f"Keystone at {context.get('auth_url')} cannot be reached ({error}): check the site and OS_AUTH_URL"
    return None


def _site_mismatch() -> str | None:
    """What to say when an application credential from one site was refused at another; None when it
    came from the site in use (or it is no application credential: federated sign-ins work at every site)."""
    from chi import context

    if not os.environ.get("OS_APPLICATION_CREDENTIAL_ID") and not os.environ.get("OS_APPLICATION_CREDENTIAL_NAME"):
        return None
    site = context.get("region_name")
    made_at = os.environ.get("OS_REGION_NAME") or _site_of(os.environ.get("OS_AUTH_URL", ""))
    if not site or not made_at or made_at == site:
        return None
    return (f"Keystone at {site} refused this application credential (401): this credential is from {made_at}; "
            f"{_who_runs_at(site)} at {site}: download the RC file from {site}'s dashboard (each site has its own "
            "Keystone, and a credential works only at the site that made it): Identity > Application Credentials > "
            "Create Application Credential, with \"Unrestricted\" ticked, then download its openrc file and set "
            "give a run its path with --rc-file (or `source` it before you start Jupyter).")


def _site_of(auth_url: str) -> str | None:
    """The site whose Keystone is at `auth_url` (an RC file without OS_REGION_NAME), or the address itself
    when it is not the one in use and no site in the list has it."""
    from urllib.parse import urlsplit

    from chi import context

    host = urlsplit(auth_url).hostname
    if not host or host == urlsplit(context.get("auth_url") or "").hostname:
        return None
    return next((name for name, web in _site_list().items() if urlsplit(web).hostname == host), auth_url)


def _site_list() -> dict[str, str]:
    """Each site's `web` address, from the list python-chi reads (CHI_RESOURCE_API_URL's when set, as
    `follow_site_list` does); empty when it cannot be read."""
    try:
        url = os.environ.get("CHI_RESOURCE_API_URL")
        if url:
            return _read_site_list(url)
        from chi import context

        return {name: site.get("web", "") for name, site in context.list_sites().items()}
    except Exception:  # the list only names the site: without it the message gives the address
        return {}


def _read_site_list(url: str) -> dict[str, str]:
    """Each site's `web` address, from the site list at `url` (what CHI_RESOURCE_API_URL names)."""
    import requests

    answer = requests.get(f"{url.rstrip('/')}/sites.json", timeout=30)
    answer.raise_for_status()
    return {item["name"]: item.get("web", "") for item in answer.json().get("items", []) if item.get("name")}


def _who_runs_at(site: str) -> str:
    """'the vm variant runs' (or 'the nvidia and amd variants run', or 'this run signs in')."""
    from chi_helpers.variants import VARIANTS

    names = [variant.name for variant in VARIANTS.values() if variant.site == site]
    if not names:
        return "this run signs in"
    return f"the {' and '.join(names)} variant{'s run' if len(names) > 1 else ' runs'}"


def _hub_session() -> bool:
    return (os.environ.get("OS_AUTH_TYPE", "").lower() == "v3oidcaccesstoken"
            and bool(os.environ.get("JUPYTERHUB_API_URL")))


class _HubRefusals(logging.Handler):
    """What python-chi logs, and keeps to itself, when the hub does not give it an access token
    (chi/context.py _SessionWithAccessTokenRefresh: "Failed to refresh access_token: <why>")."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Failed to refresh access_token"):
            self.reasons.append(record.getMessage().split(": ", 1)[-1])


@contextmanager
def hub_refusals():
    """While inside, the hub's refusals python-chi logs are collected in `.reasons`."""
    logger = logging.getLogger("chi.context")
    refusals = _HubRefusals()
    logger.addHandler(refusals)
    try:
        yield refusals
    finally:
        logger.removeHandler(refusals)


def _hub_refused(reason: str) -> str:
    what_to_do = (f"{RESTART_HELP[0].upper()}{RESTART_HELP[1:]}; if that does not help, log out of the hub "
                  "(File > Log Out) and in again.")
    if reason.startswith("403"):
        # The hub answers 403 both to a server token it does not know and when it could not renew the
        # student's sign-in with Chameleon (its refresh token expired: "Login is required").
        return (f"JupyterHub refused to hand python-chi your access token ({reason}): either your sign-in to the "
                "hub has run out (the hub renews it with Chameleon hourly, and that fails once the sign-in is "
                "too old), or it does not accept this server's JUPYTERHUB_API_TOKEN for user "
                f"{os.environ.get('JUPYTERHUB_USER')!r}. Log out of the hub (File > Log Out) and log in again; if "
                f"that does not help, {RESTART_HELP}.")
    return (f"python-chi could not get your access token from JupyterHub at {os.environ.get('JUPYTERHUB_API_URL')} "
            f"({reason}). {what_to_do}")
