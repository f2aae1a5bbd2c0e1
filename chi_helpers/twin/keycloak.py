"""Chameleon's Keycloak, as far as the hub and Keystone ask it something: the tokens it issues to the hub,
whether one is still good, and a student's projects.

No route of its own: the hub stand-in (twin/jupyterhub.py) and the federation route (twin/keystone.py)
call these functions, as they call Keycloak's token and userinfo endpoints on Chameleon.

- Tokens are JWTs (header.payload.signature, base64url), so that what reads them unverified, as the hub's
  authenticator does (jupyterhub-chameleon `authenticator/openstack_oauth.py` `authenticate`:
  `jwt.decode(access_token, options={"verify_signature": False}).get("exp")`), finds `exp`. The twin
  signs nothing: the signature part is random, and only the twin's own records say a token is good.
- An access token lasts `lifetime("access_token")`. Refresh tokens end with the sign-in's SSO session,
  `lifetime("refresh_token")` after the sign-in (Keycloak's SSO session maximum, 10 hours by default:
  `DefaultExportImportManager.importRealm` `setSsoSessionMaxLifespan(36000)`), however often they are
  used. A refresh grant gives a new pair in the same session; a refresh token that has expired is
  refused (`invalid_grant`), and then only a new sign-in helps. (Keycloak also ends a session left idle,
  30 minutes by default; the hub renews hourly, so Chameleon's idle setting must be longer, and the twin
  leaves it out.)
- Chameleon's realm settings are not public. Keycloak's default access token lasts 5 minutes; the hub
  renews tokens at most once an hour (twin/jupyterhub.py), so with 5 minutes python-chi would be handed
  an expired token for most of every hour, which is not what Chameleon's users meet. The twin's
  default is the hub's renewal age, an hour, the shortest under which the hub always has a good token
  to hand out; a test sets another (`set_lifetimes`).
- A student's projects are Keycloak groups with an active allocation, sorted by name
  (keycloak-chameleon `ChameleonProjectMapper`: `.sorted()` on the group name): the hub puts the first in
  `OS_PROJECT_NAME`.
"""

from __future__ import annotations

import base64
import json
import secrets

ISSUER = "https://auth.chameleoncloud.org/auth/realms/chameleon"
CLIENT = "jupyterhub"
LIFETIMES = {"access_token": 3600, "refresh_token": 36000}


def set_lifetimes(world, access_token: float | None = None, refresh_token: float | None = None) -> None:
    """How many seconds the tokens issued from now on last."""
    lifetimes = world.data.setdefault("keycloak_lifetimes", dict(LIFETIMES))
    if access_token is not None:
        lifetimes["access_token"] = access_token
    if refresh_token is not None:
        lifetimes["refresh_token"] = refresh_token


def lifetime(world, kind: str) -> float:
    return world.data.get("keycloak_lifetimes", LIFETIMES)[kind]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": "twin"}
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(secrets.token_bytes(32))])


def claims(token: str) -> dict:
    """A JWT's payload, read without checking its signature (as the hub's authenticator reads `exp`)."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def _tokens(world) -> dict:
    return world.data.setdefault("keycloak_tokens", {})


def issue(world, user_id: str, session_start: float | None = None) -> dict:
    """A new token pair for `user_id`, as the token endpoint answers a sign-in (a new SSO session) or a
    refresh grant (`session_start`: the session's): access_token, refresh_token, id_token, expires_in,
    refresh_expires_in, token_type, scope."""
    now = world.now().timestamp()
    session_start = now if session_start is None else session_start
    user = world.data["users"][user_id]
    common = {"iat": int(now), "iss": ISSUER, "sub": user_id, "azp": CLIENT, "sid": secrets.token_hex(8)}
    access_end = int(now + lifetime(world, "access_token"))
    refresh_end = int(session_start + lifetime(world, "refresh_token"))
    access = _jwt({**common, "exp": access_end, "typ": "Bearer", "preferred_username": user["name"],
                   "jti": secrets.token_hex(8)})
    refresh = _jwt({**common, "exp": refresh_end, "typ": "Refresh", "jti": secrets.token_hex(8)})
    identity = _jwt({**common, "exp": access_end, "typ": "ID", "preferred_username": user["name"]})
    tokens = _tokens(world)
    tokens[access] = {"user_id": user_id, "kind": "access", "expires_at": access_end}
    tokens[refresh] = {"user_id": user_id, "kind": "refresh", "expires_at": refresh_end, "session_start": session_start}
    return {"access_token": access, "refresh_token": refresh, "id_token": identity, "token_type": "Bearer",
            "expires_in": access_end - int(now), "refresh_expires_in": max(0, refresh_end - int(now)),
            "scope": "openid profile email"}


def _good(world, token: str, kind: str) -> dict | None:
    known = _tokens(world).get(token)
    if known is None or known["kind"] != kind or known["expires_at"] <= world.now().timestamp():
        return None
    return known


def userinfo(world, access_token: str) -> dict | None:
    """The user an access token stands for, or None where Keycloak answers 401 (unknown or expired); what
    Keystone's federation route (mod_auth_openidc) and the hub's refresh both ask."""
    known = _good(world, access_token, "access")
    return world.data["users"].get(known["user_id"]) if known else None


def refresh_grant(world, refresh_token: str) -> dict | None:
    """A new token pair for a good refresh token; None where Keycloak answers 400 invalid_grant (expired,
    unknown). The old refresh token is spent, as with Keycloak's refresh-token rotation."""
    known = _good(world, refresh_token, "refresh")
    if known is None:
        return None
    del _tokens(world)[refresh_token]
    return issue(world, known["user_id"], session_start=known["session_start"])


def expire(world, user_id: str, kind: str = "access") -> None:
    """Every token of `kind` of the user ends now (a test's way to reach what a long wait would)."""
    now = int(world.now().timestamp())
    for known in _tokens(world).values():
        if known["user_id"] == user_id and known["kind"] == kind:
            known["expires_at"] = min(known["expires_at"], now)


def projects_claim(world, user_id: str) -> list[dict]:
    """The `projects` claim of the userinfo answer: the user's projects, sorted by name."""
    names = sorted(world.data["projects"][p]["name"] for p in world.data["users"][user_id]["projects"])
    return [{"id": name, "name": name} for name in names]
