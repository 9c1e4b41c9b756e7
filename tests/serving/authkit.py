"""Identity for the tests: a real OIDC issuer on 127.0.0.1 (discovery document and JWKS over
HTTP, keys that can be rotated, a count of the key-set fetches), tokens minted with PyJWT, a
clients file, and moto in server mode for KMS and STS."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "servedmodel-api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Issuer:
    """An OIDC issuer: `/.well-known/openid-configuration` and `/jwks.json`, served from a
    thread on 127.0.0.1. `keys` maps kid -> private key; `publish` decides which public keys
    the set holds (rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}  # kid -> an RSA or EC private key
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/.well-known/openid-configuration":
                    issuer.discovery_fetches += 1
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks.json"}
                elif self.path == "/jwks.json":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_key(self, kid: str, kind: str = "RSA", publish: bool = True):
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "RSA"
               else ec.generate_private_key(ec.SECP256R1()))
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def jwks(self) -> dict:
        out = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                alg, jwk = "RS256", json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            else:
                alg, jwk = "ES256", json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": alg})
            out.append(jwk)
        return {"keys": out}

    def token(self, kid: str, *, sub: str = "user-1", azp: str | None = "app-1",
              aud: str = AUDIENCE, iss: str | None = None, exp_in: float = 600,
              nbf_in: float | None = None, scope: str | None = None, groups=None,
              alg: str | None = None, headers: dict | None = None) -> str:
        now = int(time.time())
        claims = {"iss": iss or self.url, "aud": aud, "sub": sub, "iat": now,
                  "exp": now + int(exp_in)}
        if azp:
            claims["azp"] = azp
        if nbf_in is not None:
            claims["nbf"] = now + int(nbf_in)
        if scope is not None:
            claims["scope"] = scope
        if groups is not None:
            claims["groups"] = groups
        key = self.keys[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clients_file(path: Path, clients: dict[str, list[str]]) -> Path:
    """Write a clients file from client name -> its TOKENS (hashed here, as the stack would)."""
    path.write_text(json.dumps({name: [sha256_hex(t) for t in tokens]
                                for name, tokens in clients.items()}))
    return path


class Moto:
    """moto in server mode on 127.0.0.1 (real HTTP: boto3's and the server's own calls)."""

    REGION = "us-east-1"

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def env(self, **more: str) -> dict[str, str]:
        """AWS variables that send boto3 and the server to this moto, with static keys."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": self.REGION,
                "AWS_DEFAULT_REGION": self.REGION, "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
                "AWS_SECRET_ACCESS_KEY": "secret", **more}

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=self.REGION,
                            aws_access_key_id="AKIATESTTESTTEST", aws_secret_access_key="secret")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def aws_free_env() -> dict[str, str]:
    """os.environ without any AWS_* variable (a developer's own credentials never reach moto
    tests, and a test's never reach AWS)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
