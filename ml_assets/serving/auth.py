"""Who may call the service: bearer tokens in two scopes, read from a secret.

- `scoring` opens POST /predict; `operations` opens /model, /health/details and the API docs
  (/docs, /redoc, /openapi.json). Neither opens the other's paths: the operations token doesn't
  score. GET /health (readiness: 200 or 503, no details) needs no token.
- Tokens come from the environment or a file (`ML_ASSETS_SERVING_{SCORING,OPERATIONS}_TOKEN[_FILE]`,
  a Kubernetes secret mounted either way), never the command line (any user on the host can read
  a process's arguments). Several whitespace-separated tokens per scope are all accepted, so one
  can be rotated without downtime.
- No token configured: authentication is off, which `python -m ml_assets.serving` allows on
  loopback only (`refusal`), unless `--insecure` says so. Once any token is configured it is on,
  and a scope without a token is closed to every caller.

Tokens are hashed once, when the service starts; a request's token is hashed and compared with
`hmac.compare_digest` (time independent of where the bytes differ).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from pathlib import Path

from ml_assets.lib.settings import value

SCORING, OPERATIONS = "scoring", "operations"
SCOPES = (SCORING, OPERATIONS)
# The scope each path needs, trailing slash dropped (None: anyone). Every other path needs the
# operations token, FastAPI's docs included: a route added later is closed until listed here.
PATH_SCOPES: dict[str, str | None] = {"/predict": SCORING, "/health": None}
# Bearer tokens as RFC 6750 spells them, long enough not to be guessed.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS = 16
REALM = 'Bearer realm="ml_assets"'  # WWW-Authenticate of a 401 (RFC 6750)


def token_settings(scope: str) -> tuple[str, str]:
    """The settings that hold a scope's tokens: (environment variable, file variable)."""
    name = f"ML_ASSETS_SERVING_{scope.upper()}_TOKEN"
    return name, f"{name}_FILE"


class AuthConfigError(ValueError):
    """Tokens the service can't start with; the message says which setting and why (never the
    token itself)."""


def read_tokens() -> dict[str, tuple[str, ...]]:
    """Each scope's tokens, from its variable or its file (checked: `check_tokens`)."""
    tokens = {}
    for scope in SCOPES:
        env, file = token_settings(scope)
        given, path = value(env), value(file)
        if given and path:
            raise AuthConfigError(f"{env} and {file} are both set: give the {scope} token(s) one way")
        if path:
            try:
                given = Path(path).read_text()
            except OSError as e:
                raise AuthConfigError(f"{file}: can't read the {scope} token file ({e.strerror})") from None
            if not given.split():
                raise AuthConfigError(f"{file}: the {scope} token file is empty")
        tokens[scope] = tuple((given or "").split())
    check_tokens(tokens)
    return tokens


def check_tokens(tokens: dict[str, tuple[str, ...]]) -> None:
    for scope, given in tokens.items():
        for i, token in enumerate(given, 1):
            if not TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_CHARS:
                raise AuthConfigError(
                    f"{scope} token #{i} must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 "
                    "- . _ ~ + / (`python -c 'import secrets; print(secrets.token_urlsafe(32))'` makes one)"
                )
    if set(tokens.get(SCORING, ())) & set(tokens.get(OPERATIONS, ())):
        raise AuthConfigError("a token is in both scopes: the operations token must not score")


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only. A name other than localhost counts as not
    (it may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(host: str, tokens: dict[str, tuple[str, ...]], insecure: bool) -> str | None:
    """Why the service must not start on `host` with these tokens, or None."""
    if any(tokens.values()) or is_loopback(host) or insecure:
        return None
    scoring, operations = token_settings(SCORING)[0], token_settings(OPERATIONS)[0]
    return (
        f"refusing to serve on {host} without authentication: anyone who can reach it could score "
        f"and read the deployment. Set {scoring} and {operations} (or their _FILE variants: a "
        "mounted secret), or pass --insecure to serve without tokens anyway."
    )


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Guard:
    """The tokens' digests per scope, and the answer a request gets at the door."""

    def __init__(self, tokens: dict[str, tuple[str, ...]]):
        check_tokens(tokens)
        self.digests = {scope: tuple(_digest(t.encode()) for t in tokens.get(scope, ())) for scope in SCOPES}
        self.on = any(self.digests.values())

    def refusal(self, path: str, authorization: bytes | None) -> tuple[int, str, str] | None:
        """None if the request may go on; else (status, reason, WWW-Authenticate value)."""
        scope = PATH_SCOPES.get(path, OPERATIONS)
        if scope is None:
            return None
        digest = _bearer_digest(authorization)
        if digest is not None and _any_equal(digest, self.digests[scope]):
            return None
        if digest is None:
            return 401, "a bearer token is required (Authorization: Bearer <token>)", REALM
        other = OPERATIONS if scope == SCORING else SCORING
        if _any_equal(digest, self.digests[other]):
            return (
                403,
                f"this is a {other} token: {path} needs the {scope} token",
                f'Bearer error="insufficient_scope", scope="{scope}"',
            )
        if not self.digests[scope]:
            return 403, f"no {scope} token is configured: {path} is closed", REALM
        return 401, "the bearer token is not valid", 'Bearer error="invalid_token"'


def _bearer_digest(authorization: bytes | None) -> bytes | None:
    if not authorization:
        return None
    kind, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if kind.lower() != b"bearer" or not token:
        return None
    return _digest(token)


def _any_equal(digest: bytes, digests: tuple[bytes, ...]) -> bool:
    found = False
    for d in digests:  # every one compared: the time doesn't say which matched
        found |= hmac.compare_digest(digest, d)
    return found
