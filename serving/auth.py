"""Who is calling: named clients (hashes of their bearer tokens) and OIDC/JWT, behind one
`Authenticator` that every front end calls with the `Authorization` value it received (REST
header or gRPC metadata) and that answers with the caller's `Identity` or raises `AuthError`
(401 / UNAUTHENTICATED, or 403 / PERMISSION_DENIED for a caller without the required scope).

Named clients: the server holds only the SHA-256 of each token (the clients file,
SERVEDMODEL_CLIENTS_FILE; the old single SERVEDMODEL_AUTH_TOKEN joins as client `default`). A
presented token is hashed once and compared with every known hash by `hmac.compare_digest`,
all of them, always, so the time taken says neither whether nor which client matched.

OIDC: RS256/ES256 tokens verified with PyJWT against the issuer's JWKS (`jwks.py`); `iss`,
`aud`, `exp` and `nbf` checked with LEEWAY_SECONDS; `alg: none`, HMAC algorithms and any other
algorithm refused before a key is chosen, and a key is used only for the algorithm of its own
type (an RSA key never verifies an HMAC or EC signature). A verified token is cached (by its
SHA-256) until it expires, at most CACHE_SECONDS, at most CACHE_ENTRIES tokens, so a caller
that reuses its token pays for the signature once (docs/benchmarks.md, "Auth cost").
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import contract
from .errors import ServingError, StartupError
from .jwks import KeySet

REALM = "servedmodel"
#: Signature algorithms a token may use: what OIDC issuers sign with. Never none or HS*.
ALGORITHMS = ("RS256", "ES256")
#: Clock skew allowed on exp/nbf/iat (seconds).
LEEWAY_SECONDS = 30
#: A verified token is trusted without checking its signature again for at most this long
#: (and never past its exp): a key the issuer withdraws stops working within this time.
CACHE_SECONDS = 300
#: Verified tokens kept at once (the oldest goes first).
CACHE_ENTRIES = 10_000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CLIENT_NAME = re.compile(contract.CLIENT_NAME_PATTERN)
_B64URL = re.compile(rb"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    #: a scope (or group, or role) the token must carry; None: any token of the issuer
    scope: str | None = None
    #: the key set; None: the issuer's discovery document names it
    jwks_url: str | None = None


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the model routes. Nothing configured: everyone (auth off)."""
    #: (client name, its token hashes as 32-byte digests), in the order given
    clients: tuple[tuple[str, tuple[bytes, ...]], ...] = field(default=(), repr=False)
    oidc: OidcSettings | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.clients) or self.oidc is not None

    @property
    def client_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.clients)


@dataclass(frozen=True)
class Identity:
    """Who made a request, as the audit record names them."""
    #: the client's name (token), the JWT's azp (else its sub), or None without auth
    client: str | None
    #: "token", "jwt" or "none" (auth off)
    method: str
    subject: str | None = None
    party: str | None = None

    def audit_fields(self) -> dict:
        fields = {"client": self.client, "auth": self.method}
        if self.method == "jwt":
            fields["sub"] = self.subject
            fields["azp"] = self.party
        return fields


ANONYMOUS = Identity(None, "none")


class AuthError(ServingError):
    """Not authenticated (401, `UNAUTHENTICATED`) or not allowed (403, `PERMISSION_DENIED`).
    `grpc_status` names the gRPC status; `identity` is who was refused when known (403)."""

    def __init__(self, status: int, message: str, *, error: str | None = "invalid_token",
                 scope: str | None = None, identity: Identity | None = None) -> None:
        challenge = f'Bearer realm="{REALM}"'
        if error:
            challenge += f', error="{error}"'
        if scope:
            challenge += f', scope="{scope}"'
        super().__init__(status, message, reason="unauthorized" if status == 401 else "forbidden",
                         headers=[(b"www-authenticate", challenge.encode())])
        self.grpc_status = "UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED"
        self.identity = identity


class KeySetPending(ServingError):
    """The issuer's keys are not loaded (yet): the token cannot be judged; retry (503)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, reason="not_ready", headers=[(b"retry-after", b"1")])


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


# -- settings ---------------------------------------------------------------------------------
def load_clients(path: str) -> tuple[tuple[str, tuple[bytes, ...]], ...]:
    """The clients file: a JSON object, client name -> list of 1 or 2 lowercase hex SHA-256
    digests of its tokens. Raises StartupError naming the file and what is accepted."""
    accepted = ("a JSON object mapping each client name (letters, digits, '_.@-', at most 64) "
                "to a list of 1 or 2 lowercase hex SHA-256 digests of its tokens, e.g. "
                '{"app": ["<sha256 hex of the token>"]}')
    where = f"SERVEDMODEL_CLIENTS_FILE {path}"
    try:
        doc = json.loads(Path(path).read_text(), parse_constant=_no_constant)
    except OSError as e:
        raise StartupError(f"{where} cannot be read: {e.strerror}") from None
    except (ValueError, RecursionError) as e:
        raise StartupError(f"{where} is not JSON ({e}); it must be {accepted}") from None
    if not isinstance(doc, dict) or not doc:
        raise StartupError(f"{where} must be {accepted}")
    problems, seen, clients = [], {}, []
    for name, digests in doc.items():
        if not _CLIENT_NAME.match(name):
            problems.append(f"client name {name[:64]!r} is not letters, digits, '_.@-' "
                            f"(at most 64, starting with a letter or digit)")
            continue
        if not isinstance(digests, list) or not 1 <= len(digests) <= contract.TOKENS_PER_CLIENT:
            problems.append(f"client {name!r}: a list of 1 or 2 token digests (the current and "
                            f"the next during a rotation)")
            continue
        out = []
        for d in digests:
            if not isinstance(d, str) or not _HEX64.match(d):
                problems.append(f"client {name!r}: {str(d)[:16]!r}... is not a lowercase hex "
                                f"SHA-256 digest (64 characters 0-9a-f; the token itself never "
                                f"goes in this file)")
                continue
            if d in seen:
                problems.append(f"client {name!r}: a token digest also belongs to client "
                                f"{seen[d]!r} (a token identifies one client)")
                continue
            seen[d] = name
            out.append(bytes.fromhex(d))
        clients.append((name, tuple(out)))
    if problems:
        raise StartupError(f"{where} is invalid: " + "; ".join(problems)
                           + f". Accepted: {accepted}")
    return tuple(clients)


def _no_constant(token: str):
    raise ValueError(f"{token} is not JSON")


# -- the authenticator ------------------------------------------------------------------------
class Authenticator:
    """One instance per server, shared by REST and gRPC. `authenticate(value)` is the whole
    check for a request (`value`: the Authorization header or metadata value, or None);
    `authenticate_async` also waits, briefly and off the event loop, for the issuer's keys when a
    token names a key the server has not loaded yet (a rotation)."""

    def __init__(self, settings: AuthSettings, keys=None) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        # Flat (digest, client) pairs: every request compares with all of them.
        self._digests = tuple((d, name) for name, ds in settings.clients for d in ds)
        self.oidc = settings.oidc
        #: the JWKS cache (jwks.KeySet) when OIDC is on
        self.keys = keys
        if self.oidc is not None and keys is None:
            self.keys = KeySet(self.oidc.issuer, self.oidc.jwks_url)
        self._verified: dict[bytes, tuple[Identity | AuthError, float]] = {}

    @property
    def ready(self) -> bool:
        """False while OIDC is on and the issuer's keys have never been loaded."""
        return self.keys is None or self.keys.loaded

    # -- the check ------------------------------------------------------------------------
    def authenticate(self, value: bytes | None) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        token = _bearer(value)
        digest = token_digest(token)
        # Clients: all digests, no early exit (timing independent of which one matched).
        found = None
        for known, name in self._digests:
            if hmac.compare_digest(known, digest):
                found = name
        if found is not None:
            return Identity(found, "token")
        if self.oidc is None:
            raise AuthError(401, "invalid bearer token")
        cached = self._verified.get(digest)
        if cached is not None:
            outcome, until = cached
            if time.time() < until:
                if isinstance(outcome, AuthError):
                    raise outcome
                return outcome
            del self._verified[digest]
        if token.count(b".") != 2:
            raise AuthError(401, "invalid bearer token: neither a client token nor a JWT")
        outcome, until = self._verify_jwt(token)
        if len(self._verified) >= CACHE_ENTRIES:
            del self._verified[next(iter(self._verified))]
        self._verified[digest] = (outcome, until)
        if isinstance(outcome, AuthError):
            raise outcome
        return outcome

    async def authenticate_async(self, value: bytes | None) -> Identity:
        try:
            return self.authenticate(value)
        except UnknownKey as e:
            assert self.keys is not None            # UnknownKey comes from the OIDC path
            if not await self.keys.refresh_for(e.kid):
                raise AuthError(401, f"invalid bearer token: unknown key id {e.kid[:64]!r} "
                                     f"(not in the issuer's key set)") from None
            return self.authenticate(value)

    # -- JWT --------------------------------------------------------------------------------
    def _verify_jwt(self, token: bytes) -> tuple[Identity | AuthError, float]:
        """(identity or the 403 to give, until when it may be cached). Raises AuthError (401,
        not cached: an attacker's junk must not fill the cache) or UnknownKey."""
        import jwt

        oidc, keys = self.oidc, self.keys
        assert oidc is not None and keys is not None    # a JWT is verified only with OIDC on
        head, _, _ = token.partition(b".")
        if not _B64URL.match(head):
            raise AuthError(401, "invalid bearer token: malformed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid bearer token: malformed JWT header") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthError(401, f"invalid bearer token: algorithm {str(alg)[:16]!r} is not "
                                 f"accepted ({', '.join(ALGORITHMS)})")
        if not keys.loaded:
            raise KeySetPending("the issuer's signing keys are not loaded yet; retry")
        kid = header.get("kid")
        key = keys.find(kid if isinstance(kid, str) else None, alg)
        if key is None:
            if isinstance(kid, str) and kid and kid not in keys.kids:
                keys.request_refresh()    # in the background; authenticate_async waits
                raise UnknownKey(kid)
            raise AuthError(401, f"invalid bearer token: no {alg} key "
                                 f"{'with id ' + repr(str(kid)[:64]) if kid else '(no kid)'} "
                                 f"in the issuer's key set")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=oidc.audience,
                                issuer=oidc.issuer, leeway=LEEWAY_SECONDS,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid bearer token: expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "invalid bearer token: not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, f"invalid bearer token: audience is not "
                                 f"{oidc.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, f"invalid bearer token: issuer is not {oidc.issuer!r}") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(401, f"invalid bearer token: no {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "invalid bearer token: bad signature") from None
        except jwt.PyJWTError as e:
            raise AuthError(401, f"invalid bearer token: {type(e).__name__}") from None
        sub = _claim_text(claims.get("sub"))
        azp = _claim_text(claims.get("azp")) or _claim_text(claims.get("client_id"))
        identity = Identity(azp or sub, "jwt", subject=sub, party=azp)
        until = min(float(claims["exp"]), time.time() + CACHE_SECONDS)
        if oidc.scope and oidc.scope not in _grants(claims):
            return AuthError(403, f"the token does not grant {oidc.scope!r} (scope, scp, groups "
                                  f"or roles)", error="insufficient_scope", scope=oidc.scope,
                             identity=identity), until
        return identity, until


class UnknownKey(AuthError):
    """A well-formed token signed with a key id the loaded key set does not hold."""

    def __init__(self, kid: str) -> None:
        super().__init__(401, f"invalid bearer token: unknown key id {kid[:64]!r}")
        self.kid = kid


def _bearer(value: bytes | None) -> bytes:
    if value is None:
        raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                        error=None)
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        raise AuthError(401, "invalid authorization: use 'Authorization: Bearer <token>'",
                        error="invalid_request")
    return token


def _claim_text(value: object) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


def _grants(claims: dict) -> set[str]:
    """Everything a token grants: OAuth `scope` (space-separated), `scp` (Okta, Entra ID:
    a list or a string), and `groups` / `roles` lists."""
    out: set[str] = set()
    for name in ("scope", "scp", "groups", "roles"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, str))
    return out
