"""The OIDC issuer's signing keys (its JWKS), fetched, cached and refreshed without ever
blocking the event loop: every fetch runs in a thread, bounded in time (FETCH_TIMEOUT_SECONDS)
and size (MAX_DOCUMENT_BYTES), and the loop only awaits it.

- At start (`start`): the discovery document (`<issuer>/.well-known/openid-configuration`,
  unless SERVEDMODEL_OIDC_JWKS_URL names the key set) and the key set. Until a key set has been
  loaded once the server is not ready (JWT requests could not be judged); it retries every
  RETRY_SECONDS.
- Every REFRESH_SECONDS, in the background: the key set again (an issuer publishes its next key
  before it signs with it).
- A token that names a key id the set does not hold (the issuer rotated sooner): one refresh,
  shared by every request that waits for it, at most once per MIN_REFRESH_SECONDS, so a flood
  of tokens with made-up key ids cannot turn into a flood of fetches.
A failed refresh keeps the keys already loaded.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Seconds one fetch (connect + read) may take.
FETCH_TIMEOUT_SECONDS = 5.0
#: The largest discovery document or key set read (a JWKS of a few keys is ~2-5 KB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: Keys kept from one set (the rest are ignored).
MAX_KEYS = 64
#: Background refresh of a loaded set.
REFRESH_SECONDS = 600.0
#: Retry while no set has been loaded yet.
RETRY_SECONDS = 5.0
#: At most one refresh for unknown key ids this often.
MIN_REFRESH_SECONDS = 10.0
#: Key type (and curve) -> the one algorithm a key of that type may verify.
ALGORITHM_OF = {("RSA", None): "RS256", ("EC", "P-256"): "ES256"}


class KeySetError(Exception):
    pass


def check_url(variable: str, url: str) -> str | None:
    """A problem with an issuer or JWKS URL, or None: https, or http on the loopback only
    (a token's keys must not come over a network in clear)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{variable}={url!r} must be an https:// URL"
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return f"{variable}={url!r} must be https:// (http:// only on the loopback, for tests)"
    return None


def fetch_json(url: str) -> dict:
    """GET `url` as JSON, in the calling thread; KeySetError with one line on any failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "servedmodel"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_DOCUMENT_BYTES + 1)
    except Exception as e:   # URLError, HTTPError, timeouts, resets: all one failure
        raise KeySetError(f"GET {url}: {type(e).__name__}: {str(e)[:200]}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise KeySetError(f"GET {url}: more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError:
        raise KeySetError(f"GET {url}: not JSON") from None
    if not isinstance(doc, dict):
        raise KeySetError(f"GET {url}: not a JSON object")
    return doc


def parse_keys(doc: dict) -> dict[str | None, list[tuple[str, object]]]:
    """kid -> [(algorithm, public key)] of the usable signing keys of a JWKS document."""
    import jwt

    keys: dict[str | None, list[tuple[str, object]]] = {}
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise KeySetError("the key set has no 'keys' list")
    for jwk in entries[:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        alg = ALGORITHM_OF.get((jwk.get("kty"), jwk.get("crv")))
        if alg is None or jwk.get("alg", alg) != alg:
            continue        # HMAC ("oct") keys, other curves, a key declared for another alg
        try:
            key = jwt.PyJWK.from_dict(jwk, algorithm=alg).key
        except jwt.PyJWTError:
            continue
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
        keys.setdefault(kid, []).append((alg, key))
    if not keys:
        raise KeySetError("the key set holds no RS256 or ES256 signing key")
    return keys


class KeySet:
    def __init__(self, issuer: str, jwks_url: str | None) -> None:
        self.issuer = issuer.rstrip("/")
        self.jwks_url = jwks_url
        self._keys: dict[str | None, list[tuple[str, object]]] = {}
        self.loaded = False
        self.last_error: str | None = None
        self._last_fetch = float("-inf")
        self._refresh: asyncio.Task | None = None
        self._background: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jwks")

    @property
    def refreshing(self) -> bool:
        """A refresh for an unknown key id is under way."""
        return self._refresh is not None and not self._refresh.done()

    @property
    def kids(self) -> frozenset:
        return frozenset(self._keys)

    def find(self, kid: str | None, alg: str) -> Any:  # a public key, as PyJWT's from_jwk made it
        """The public key for (kid, alg), or None. Without a kid, the one key of that
        algorithm when the set has exactly one."""
        if kid is None:
            matches = [k for entries in self._keys.values() for a, k in entries if a == alg]
            return matches[0] if len(matches) == 1 else None
        for a, key in self._keys.get(kid, ()):
            if a == alg:
                return key
        return None

    # -- fetching (in a thread) -------------------------------------------------------------
    def _fetch(self) -> dict:
        url = self.jwks_url
        if url is None:
            discovery = fetch_json(self.issuer + "/.well-known/openid-configuration")
            url = discovery.get("jwks_uri")
            if not isinstance(url, str):
                raise KeySetError("the issuer's discovery document has no jwks_uri")
            problem = check_url("jwks_uri", url)
            if problem:
                raise KeySetError(problem)
            self.jwks_url = url
        return parse_keys(fetch_json(url))

    async def load(self) -> bool:
        """Fetch the set now (off the loop); True when it was loaded."""
        self._last_fetch = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            keys = await asyncio.wait_for(loop.run_in_executor(self._pool, self._fetch),
                                          2 * FETCH_TIMEOUT_SECONDS + 1)
        except (TimeoutError, KeySetError) as e:
            message = str(e) or "timed out"
            if message != self.last_error:
                print(f"serving: OIDC key set of {self.issuer}: {message}"
                      f"{' (keeping the keys loaded before)' if self.loaded else ''}",
                      file=sys.stderr, flush=True)
            self.last_error = message
            return False
        self._keys, self.loaded, self.last_error = keys, True, None
        return True

    def start(self) -> None:
        """Load the set in the background (the server listens meanwhile, not ready), then keep
        it fresh."""
        self._background = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def _keep_fresh(self) -> None:
        while True:
            await self.load()
            await asyncio.sleep(REFRESH_SECONDS if self.loaded else RETRY_SECONDS)

    def request_refresh(self) -> asyncio.Task | None:
        """Start (or join) a refresh for an unknown key id, unless one ran less than
        MIN_REFRESH_SECONDS ago; the refresh task, or None."""
        if self._refresh is not None and not self._refresh.done():
            return self._refresh
        if time.monotonic() - self._last_fetch < MIN_REFRESH_SECONDS:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._refresh = loop.create_task(self.load())
        return self._refresh

    async def refresh_for(self, kid: str) -> bool:
        """Wait for a refresh (when allowed); True when `kid` is known afterwards."""
        task = self.request_refresh()
        if task is None:
            return False
        await asyncio.shield(task)
        return kid in self._keys

    async def stop(self) -> None:
        for task in (self._background, self._refresh):
            if task is not None:
                task.cancel()
        self._pool.shutdown(wait=False)
