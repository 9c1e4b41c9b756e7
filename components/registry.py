"""Which digest a tag names in a registry: the Docker Registry HTTP API v2, as docker itself asks.

A revert (model A, then B, then A again) must deploy the image A's first `up` pushed, not build
and push A again (components/model_image.py). For a registry that is not ECR (`servedmodel:registry`)
the program asks the registry itself: `HEAD /v2/<name>/manifests/<tag>` with the manifest media
types docker accepts, answered with the `Docker-Content-Digest` header (200) or 404 (no such tag,
or no such repository). Registries that require a token answer 401 with a `WWW-Authenticate`
challenge: Basic (retry with the credentials) or Bearer (fetch a pull token from the realm, then
retry), as the distribution project's token-authentication specification describes
(distribution/distribution docs/spec/auth/token.md; docs/spec/api.md "Existing Manifests").
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterable, Optional

# What docker sends in Accept when it resolves a tag: single-platform manifests and manifest
# lists / OCI indexes (a multi-platform push is an index). Without them a registry may answer
# with a converted schema-1 manifest and a digest that is not the pushed one.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(RuntimeError):
    """The registry could not say whether a tag exists (unreachable, refused, malformed)."""


def split_repository(repository: str) -> tuple[str, str]:
    """`registry.example.com:5000/team/model` -> (`registry.example.com:5000`, `team/model`)."""
    host, sep, name = repository.partition("/")
    if not sep or not name or ("." not in host and ":" not in host and host != "localhost"):
        raise ValueError(f"not a repository on a registry host: {repository!r} (expected host/name)")
    return host, name


def _scheme(host: str) -> str:
    """HTTPS, except for registries on the loopback interface: docker itself treats 127.0.0.0/8
    (and localhost) as insecure registries it may reach over plain HTTP."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return "http" if bare == "localhost" or bare.startswith("127.") or bare in ("[::1]", "::1") else "https"


class _Client:
    def __init__(self, host: str, name: str, username: str, password: str, timeout: float):
        self.base = f"{_scheme(host)}://{host}"
        self.name, self.username, self.password, self.timeout = name, username, password, timeout
        self.authorization: Optional[str] = None

    def _basic(self) -> Optional[str]:
        if not self.username:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def _request(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, b""
        except OSError as e:
            raise RegistryError(f"{url}: {e}") from None

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(_CHALLENGE.findall(params))
        if scheme.lower() == "basic":
            basic = self._basic()
            if basic is None:
                raise RegistryError(f"{self.base} asks for credentials (Basic) and none were given")
            self.authorization = basic
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryError(f"{self.base}: unsupported authentication challenge {challenge!r}")
        query = {"scope": fields.get("scope") or f"repository:{self.name}:pull"}
        if fields.get("service"):
            query["service"] = fields["service"]
        headers = {}
        basic = self._basic()
        if basic is not None:
            headers["Authorization"] = basic
        status, _, body = self._request("GET", fields["realm"] + "?" + urllib.parse.urlencode(query), headers)
        if status != 200:
            raise RegistryError(f"{fields['realm']}: token request answered {status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryError(f"{fields['realm']}: no token in the answer") from None
        self.authorization = f"Bearer {token}"

    def digest(self, reference: str) -> Optional[str]:
        url = f"{self.base}/v2/{self.name}/manifests/{urllib.parse.quote(reference, safe='')}"
        for attempt in range(2):
            headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
            if self.authorization:
                headers["Authorization"] = self.authorization
            status, answer, _ = self._request("HEAD", url, headers)
            if status == 401 and attempt == 0 and "www-authenticate" in answer:
                self._authenticate(answer["www-authenticate"])
                continue
            if status == 404:
                return None
            if status != 200:
                raise RegistryError(f"HEAD {url} answered {status}")
            digest = answer.get("docker-content-digest")
            if digest is None:  # the header is a SHOULD: the digest of the manifest's bytes
                _, _, body = self._request("GET", url, headers)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
            return digest
        raise RegistryError(f"HEAD {url}: still unauthorized after authenticating")


def tag_digests(repository: str, tags: Iterable[str], username: str = "", password: str = "",
                timeout: float = 10.0) -> dict[str, str]:
    """The digest each of `tags` names in `repository` (host/name), for the tags that exist.
    Raises RegistryError when the registry cannot say."""
    host, name = split_repository(repository)
    client = _Client(host, name, username, password, timeout)
    found = {}
    for tag in dict.fromkeys(tags):
        digest = client.digest(tag)
        if digest is not None:
            found[tag] = digest
    return found
