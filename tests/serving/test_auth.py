"""Who may call: named clients (token hashes), OIDC/JWT against a real JWKS endpoint on
127.0.0.1, the same rules on REST and gRPC, and unknown SERVEDMODEL_* variables refused."""
from __future__ import annotations

import asyncio
import hmac
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from authkit import AUDIENCE, Issuer, clients_file, sha256_hex
from servedmodel.serving import auth as auth_mod
from servedmodel.serving import contract
from servedmodel.serving.auth import Authenticator, AuthError, AuthSettings, OidcSettings
from servedmodel.serving.errors import StartupError
from servedmodel.serving.jwks import KeySet, parse_keys
from servedmodel.serving.manifest import load_manifest
from servedmodel.serving.settings import load_settings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
X = np.zeros((1, 784), np.float32)


def _bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


# -- fail closed --------------------------------------------------------------------------------
def test_a_misspelt_setting_stops_the_server_naming_the_nearest(contexts):
    m = load_manifest(contexts["mlp"])
    with pytest.raises(StartupError) as e:
        load_settings(m, {}, {"SERVEDMODEL_CLIENTS_FIL": "/x.json"})
    assert "SERVEDMODEL_CLIENTS_FIL is not a setting" in str(e.value)
    assert "did you mean SERVEDMODEL_CLIENTS_FILE?" in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "serving", "--context", str(contexts["mlp"]),
                           "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SERVEDMODEL_AUDIT_LGO": "-"})
    assert proc.returncode == 2
    assert "SERVEDMODEL_AUDIT_LGO" in proc.stderr and "SERVEDMODEL_AUDIT_LOG" in proc.stderr


def test_variables_of_other_tools_and_kubernetes_service_links_pass():
    env = {"SERVEDMODEL_CACHE": "/c", "SERVEDMODEL_DEBUG": "1", "SERVEDMODEL_SERVICE_HOST": "10.0.0.1",
           "SERVEDMODEL_SERVICE_PORT": "80", "SERVEDMODEL_PORT_8080_TCP_ADDR": "10.0.0.1",
           "SERVEDMODEL_X_SERVICE_PORT_HTTP": "80", "OTHER": "1"}
    assert unknown_variables(env) == []
    assert unknown_variables({"SERVEDMODEL_OIDC_ISUER": "x"})[0].endswith(
        "did you mean SERVEDMODEL_OIDC_ISSUER?)")


def test_every_servedmodel_variable_in_the_repository_is_known():
    """What the components, the Dockerfile, the stacks, the docs and the tests set must never be
    refused by the server by mistake: each is a server setting or another tool's variable."""
    known = set(contract.SERVER_VARIABLES) | set(contract.OTHER_TOOLS_VARIABLES)
    found: dict[str, str] = {}
    for path in ROOT.rglob("*"):
        if not path.is_file() or any(p in path.parts for p in (".git", ".venv", "venv", "build",
                                                                 "__pycache__", "node_modules")):
            continue
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".json", ".txt", ".sh", "") \
                and not path.name.startswith("Dockerfile"):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for name in re.findall(r"SERVEDMODEL_([A-Z][A-Z0-9_]*[A-Z0-9])", text):
            found.setdefault(name, str(path.relative_to(ROOT)))
    # placeholders in prose ("SERVEDMODEL_NAME=value"), and the misspellings these tests use
    allowed = {"NAME", "CLIENTS_FIL", "AUDIT_LGO", "OIDC_ISUER", "X_SERVICE_PORT_HTTP",
               "SERVICE_HOST", "SERVICE_PORT", "PORT_8080_TCP_ADDR", "X_PORT_8080_TCP_ADDR",
               "OIDC"}   # "SERVEDMODEL_OIDC_*" in prose
    unknown = {n: where for n, where in found.items() if n not in known | allowed}
    assert not unknown, f"SERVEDMODEL_* variables the server would refuse: {unknown}"
    settings_src = (ROOT / "serving" / "settings.py").read_text()
    for name in re.findall(r'pick\("([a-z_]+)"', settings_src):
        assert name.upper() in contract.SERVER_VARIABLES, name


# -- the clients file -----------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    ("{not json", "is not JSON"),
    ("[]", "must be a JSON object"),
    ("{}", "must be a JSON object"),
    ('{"app": "' + "a" * 64 + '"}', "a list of 1 or 2 token digests"),
    ('{"app": ["' + "A" * 64 + '"]}', "is not a lowercase hex SHA-256 digest"),
    ('{"app": ["' + "a" * 64 + '", "' + "b" * 64 + '", "' + "c" * 64 + '"]}', "a list of 1 or 2"),
    ('{"a": ["' + "a" * 64 + '"], "b": ["' + "a" * 64 + '"]}', "also belongs to client 'a'"),
    ('{"bad name": ["' + "a" * 64 + '"]}', "client name 'bad name'"),
])
def test_a_malformed_clients_file_is_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "clients.json"
    path.write_text(content)
    with pytest.raises(StartupError) as e:
        auth_mod.load_clients(str(path))
    assert str(path) in str(e.value) and words in str(e.value)
    assert "lowercase hex SHA-256" in str(e.value)          # what is accepted


def test_a_malformed_clients_file_stops_the_server(contexts, tmp_path):
    path = tmp_path / "clients.json"
    path.write_text('{"app": ["not-a-digest"]}')
    proc = subprocess.run([sys.executable, "-m", "serving", "--context", str(contexts["mlp"])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "SERVEDMODEL_CLIENTS_FILE": str(path)})
    assert proc.returncode == 2 and str(path) in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_the_token_lookup_compares_every_digest_whichever_matches(monkeypatch, tmp_path):
    tokens = {f"c{i}": [f"tok-{i}-a", f"tok-{i}-b"] for i in range(5)}
    clients = auth_mod.load_clients(str(clients_file(tmp_path / "c.json", tokens)))
    a = Authenticator(AuthSettings(clients=clients))
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth_mod.hmac, "compare_digest",
                        lambda x, y: calls.append(1) or real(x, y))
    for token, expected in (("tok-0-a", "c0"), ("tok-4-b", "c4"), ("tok-2-b", "c2")):
        calls.clear()
        assert a.authenticate(_bearer(token)).client == expected
        assert len(calls) == 10                      # all of them, not up to the match
    calls.clear()
    with pytest.raises(AuthError) as e:
        a.authenticate(_bearer("nobody"))
    assert e.value.status == 401 and len(calls) == 10
    assert "tok-0-a" not in repr(AuthSettings(clients=clients))


def test_the_old_token_is_client_default(contexts, tmp_path):
    m = load_manifest(contexts["mlp"])
    path = clients_file(tmp_path / "c.json", {"app": ["t-app"]})
    s = load_settings(m, {}, {"SERVEDMODEL_AUTH_TOKEN": "old", "SERVEDMODEL_CLIENTS_FILE": str(path)})
    assert s.auth.client_names == (contract.DEFAULT_CLIENT, "app") and "old" not in repr(s)
    a = Authenticator(s.auth)
    assert a.authenticate(_bearer("old")).client == "default"
    assert a.authenticate(_bearer("t-app")).client == "app"
    clash = clients_file(tmp_path / "d.json", {"default": ["x"]})
    with pytest.raises(StartupError, match="names a client 'default'"):
        load_settings(m, {}, {"SERVEDMODEL_AUTH_TOKEN": "old", "SERVEDMODEL_CLIENTS_FILE": str(clash)})


def test_named_clients_over_rest_and_grpc(contexts, start_server, tmp_path):
    """Two live tokens per client (a rotation), each naming its client in the audit stream; a
    wrong token 401 on both front ends; probes and metrics open."""
    path = clients_file(tmp_path / "clients.json", {"alice": ["alice-old", "alice-new"],
                                                    "bob": ["bob-1"]})
    audit = tmp_path / "audit.jsonl"
    server = start_server(contexts["mlp"], {"SERVEDMODEL_CLIENTS_FILE": str(path),
                                            "SERVEDMODEL_AUDIT_LOG": str(audit)}, grpc=True)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    grpc = tg.InferenceServerClient(server.grpc_url)
    assert grpc.is_server_live()
    for token in ("alice-old", "alice-new", "bob-1"):
        inp = triton.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(X)
        res = client.infer("test-mlp", [inp], headers={"Authorization": f"Bearer {token}"})
        assert res.as_numpy("logits").shape == (1, 10)
        ginp = tg.InferInput("input", [1, 784], "FP32")
        ginp.set_data_from_numpy(X)
        res = grpc.infer("test-mlp", [ginp], headers={"authorization": f"Bearer {token}"})
        assert res.as_numpy("logits").shape == (1, 10)
    r = httpx.get(server.url + "/v2/models/test-mlp", headers={"Authorization": "Bearer alice"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_metadata("test-mlp", headers={"authorization": "Bearer alice"})
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    server.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    ok = [(r["protocol"], r["client"]) for r in records if r["status"] == 200]
    assert sorted(ok) == sorted([(p, c) for c in ("alice", "alice", "bob") for p in ("rest", "grpc")])
    assert {r["auth"] for r in records if r["status"] == 200} == {"token"}
    refused = [r for r in records if r["status"] == 401]
    assert len(refused) == 2 and all(r["client"] is None for r in refused)
    assert {r["grpc_code"] for r in refused} == {None, "UNAUTHENTICATED"}
    text = audit.read_text()
    for secret in ("alice-old", "alice-new", "bob-1", sha256_hex("alice-old")):
        assert secret not in text


# -- OIDC: the verifier on a real key set -------------------------------------------------------
@pytest.fixture(scope="module")
def issuer():
    iss = Issuer()
    iss.add_key("rsa-1")
    iss.add_key("ec-1", "EC")
    yield iss
    iss.close()


def _authenticator(issuer: Issuer, scope: str | None = None) -> Authenticator:
    oidc = OidcSettings(issuer=issuer.url, audience=AUDIENCE, scope=scope)
    keys = KeySet(issuer.url, None)
    a = Authenticator(AuthSettings(oidc=oidc), keys=keys)
    asyncio.run(keys.load())
    assert keys.loaded
    return a


def test_jwt_rs256_and_es256_name_their_caller(issuer):
    a = _authenticator(issuer)
    who = a.authenticate(_bearer(issuer.token("rsa-1", sub="u-7", azp="batch-job")))
    assert (who.client, who.method, who.subject, who.party) == ("batch-job", "jwt", "u-7", "batch-job")
    assert a.authenticate(_bearer(issuer.token("ec-1", azp=None, sub="u-8"))).client == "u-8"


@pytest.mark.parametrize("make, words", [
    (lambda i: i.token("rsa-1", exp_in=-120), "expired"),
    (lambda i: i.token("rsa-1", aud="another-api"), "audience"),
    (lambda i: i.token("rsa-1", iss="https://evil.example"), "issuer"),
    (lambda i: i.token("rsa-1", nbf_in=600), "not valid yet"),
    (lambda i: jwt.encode({"iss": i.url, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
                          cast(Any, None), algorithm="none", headers={"kid": "rsa-1"}),  # no key: 'none'
     "'none' is not accepted"),
    # HMAC with the public key as the secret (the classic alg confusion): refused by algorithm
    (lambda i: _hs256_with_public_key(i), "'HS256' is not accepted"),  # noqa: PLW0108 - defined below
    (lambda i: _forged_alg(i, "ec-1", "ES384"), "'ES384' is not accepted"),
    # an RS256 header on a key published for ES256: no key of that type under that id
    (lambda i: _forged_alg(i, "ec-1", "RS256"), "no RS256 key"),
    (lambda i: i.token("rsa-1")[:-6] + "AAAAAA", "bad signature"),
    (lambda i: "not.a.jwt", "malformed"),
])
def test_jwt_refusals(issuer, make, words):
    a = _authenticator(issuer)
    with pytest.raises(AuthError) as e:
        a.authenticate(_bearer(make(issuer)))
    assert e.value.status == 401 and words in e.value.message, e.value.message
    assert 'error="invalid_token"' in dict(e.value.headers)[b"www-authenticate"].decode()


def _hs256_with_public_key(issuer: Issuer) -> str:
    from cryptography.hazmat.primitives import serialization

    pem = issuer.keys["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64
    import hashlib
    import hmac as h

    def b64(d: bytes) -> bytes:
        return base64.urlsafe_b64encode(d).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": issuer.url, "aud": AUDIENCE, "sub": "x",
                           "exp": int(time.time()) + 60}).encode())
    sig = b64(h.new(pem, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def _forged_alg(issuer: Issuer, kid: str, alg: str) -> str:
    token = issuer.token(kid)
    head, rest = token.split(".", 1)
    import base64
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["alg"] = alg
    new = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return new + "." + rest


def test_a_missing_scope_is_403_with_the_caller_named(issuer):
    a = _authenticator(issuer, scope="models:infer")
    assert a.authenticate(_bearer(issuer.token("rsa-1", scope="openid models:infer"))).method == "jwt"
    assert a.authenticate(_bearer(issuer.token("rsa-1", scope=None, groups=["models:infer"])))
    with pytest.raises(AuthError) as e:
        a.authenticate(_bearer(issuer.token("rsa-1", sub="u-9", azp=None, scope="openid")))
    assert e.value.status == 403 and e.value.grpc_status == "PERMISSION_DENIED"
    assert e.value.identity.client == "u-9"
    challenge = dict(e.value.headers)[b"www-authenticate"].decode()
    assert 'error="insufficient_scope"' in challenge and 'scope="models:infer"' in challenge


def test_verified_tokens_are_cached_until_expiry(issuer, monkeypatch):
    a = _authenticator(issuer)
    token = _bearer(issuer.token("rsa-1", exp_in=2))
    a.authenticate(token)
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *x, **k: calls.append(1) or real(*x, **k))
    for _ in range(100):
        a.authenticate(token)                          # no signature check again
    assert calls == []
    time.sleep(2.2)
    a.authenticate(token)          # past exp: checked again (and, within the leeway, accepted)
    assert calls == [1]


def test_an_unknown_key_id_refreshes_the_set_once(monkeypatch):
    """The issuer rotates: a token signed with a key published after the server loaded the
    set is accepted after one refresh; a flood of made-up key ids costs no more fetches."""
    from servedmodel.serving import jwks as jwks_mod

    iss = Issuer()
    try:
        iss.add_key("old")
        monkeypatch.setattr(jwks_mod, "MIN_REFRESH_SECONDS", 0.0)

        async def run():
            a = Authenticator(AuthSettings(oidc=OidcSettings(iss.url, AUDIENCE)),
                              keys=KeySet(iss.url, None))
            await a.keys.load()
            fetches = iss.jwks_fetches
            iss.add_key("new")                          # published after our load
            who = await a.authenticate_async(_bearer(iss.token("new")))
            assert who.method == "jwt" and iss.jwks_fetches == fetches + 1
            jwks_mod.MIN_REFRESH_SECONDS = 3600.0       # the rate limit from here on
            iss.add_key("ghost", publish=False)
            for _ in range(20):
                with pytest.raises(AuthError, match="unknown key id"):
                    await a.authenticate_async(_bearer(iss.token("ghost")))
            assert iss.jwks_fetches == fetches + 1
        asyncio.run(run())
    finally:
        iss.close()


def test_hmac_keys_and_oversized_sets_are_not_used():
    with pytest.raises(Exception, match="no RS256 or ES256"):
        parse_keys({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]})


# -- OIDC: the real server ----------------------------------------------------------------------
def test_oidc_on_rest_and_grpc(contexts, start_server, tmp_path):
    iss = Issuer()
    try:
        iss.add_key("k1")
        audit = tmp_path / "audit.jsonl"
        server = start_server(contexts["mlp"], {"SERVEDMODEL_OIDC_ISSUER": iss.url,
                                                "SERVEDMODEL_OIDC_AUDIENCE": AUDIENCE,
                                                "SERVEDMODEL_OIDC_SCOPE": "models:infer",
                                                "SERVEDMODEL_AUDIT_LOG": str(audit)}, grpc=True)
        good = iss.token("k1", scope="models:infer", sub="svc-a", azp="app-a")
        no_scope = iss.token("k1", scope="openid", sub="svc-b", azp=None)
        expired = iss.token("k1", scope="models:infer", exp_in=-300)
        url = server.url + "/v2/models/test-mlp"
        assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        r = httpx.get(url, headers={"Authorization": f"Bearer {no_scope}"})
        assert r.status_code == 403 and "insufficient_scope" in r.headers["www-authenticate"]
        r = httpx.get(url, headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
        assert httpx.get(url).headers["www-authenticate"] == 'Bearer realm="servedmodel"'
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        inp = triton.InferInput("input", [1, 784], "FP32")
        inp.set_data_from_numpy(X)
        assert client.infer("test-mlp", [inp], headers={"Authorization": f"Bearer {good}"}) \
            .as_numpy("logits").shape == (1, 10)
        grpc = tg.InferenceServerClient(server.grpc_url)
        ginp = tg.InferInput("input", [1, 784], "FP32")
        ginp.set_data_from_numpy(X)
        assert grpc.infer("test-mlp", [ginp], headers={"authorization": f"Bearer {good}"}) \
            .as_numpy("logits").shape == (1, 10)
        for token, status in ((no_scope, "StatusCode.PERMISSION_DENIED"),
                              (expired, "StatusCode.UNAUTHENTICATED")):
            with pytest.raises(InferenceServerException) as e:
                grpc.infer("test-mlp", [ginp], headers={"authorization": f"Bearer {token}"})
            assert e.value.status() == status
        server.stop()
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        assert [(r["status"], r["client"], r.get("sub")) for r in records] == [
            (200, "app-a", "svc-a"), (403, "svc-b", "svc-b"), (401, None, None),
            (401, None, None), (200, "app-a", "svc-a"), (200, "app-a", "svc-a"),
            (403, "svc-b", "svc-b"), (401, None, None)]
        text = audit.read_text()
        assert good not in text and no_scope.split(".")[2] not in text
    finally:
        iss.close()


def test_grpc_picks_up_a_rotated_key_on_its_first_call(contexts, start_server):
    """gRPC checks tokens on the call's HEADERS (no await there): a JWT signed with a key the
    issuer published after the server loaded its set is held until the one refresh it starts,
    then served; a made-up key id right after is refused (the refresh's rate limit)."""
    from servedmodel.serving.jwks import MIN_REFRESH_SECONDS

    iss = Issuer()
    try:
        iss.add_key("old")
        server = start_server(contexts["mlp"], {"SERVEDMODEL_OIDC_ISSUER": iss.url,
                                                "SERVEDMODEL_OIDC_AUDIENCE": AUDIENCE}, grpc=True)
        loaded = time.monotonic()
        iss.add_key("new")
        fetches = iss.jwks_fetches
        time.sleep(max(0.0, MIN_REFRESH_SECONDS + 0.5 - (time.monotonic() - loaded)))
        grpc = tg.InferenceServerClient(server.grpc_url)
        ginp = tg.InferInput("input", [1, 784], "FP32")
        ginp.set_data_from_numpy(X)
        res = grpc.infer("test-mlp", [ginp], headers={"authorization": f"Bearer {iss.token('new')}"})
        assert res.as_numpy("logits").shape == (1, 10) and iss.jwks_fetches == fetches + 1
        iss.add_key("ghost", publish=False)
        with pytest.raises(InferenceServerException) as e:
            grpc.infer("test-mlp", [ginp], headers={"authorization": f"Bearer {iss.token('ghost')}"})
        assert e.value.status() == "StatusCode.UNAUTHENTICATED" and iss.jwks_fetches == fetches + 1
    finally:
        iss.close()


def test_oidc_server_is_not_ready_until_the_keys_load(contexts, start_server):
    """An issuer that does not answer: the server is live, not ready, and says why."""
    from authkit import free_port

    url = f"http://127.0.0.1:{free_port()}"
    server = start_server(contexts["mlp"], {"SERVEDMODEL_OIDC_ISSUER": url,
                                            "SERVEDMODEL_OIDC_AUDIENCE": AUDIENCE}, ready=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/v2/health/live").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    time.sleep(1.0)
    r = httpx.get(server.url + "/v2/health/ready")
    assert r.status_code == 503 and "signing keys" in r.json()["error"]


def test_oidc_settings_are_checked(contexts):
    m = load_manifest(contexts["mlp"])
    with pytest.raises(StartupError, match="needs both"):
        load_settings(m, {}, {"SERVEDMODEL_OIDC_ISSUER": "https://id.example"})
    with pytest.raises(StartupError, match="must be https"):
        load_settings(m, {}, {"SERVEDMODEL_OIDC_ISSUER": "http://id.example",
                              "SERVEDMODEL_OIDC_AUDIENCE": "a"})
