"""Encrypted models in the server: opened in memory with the local key or through KMS (moto in
server mode on 127.0.0.1: real HTTP, the server's own SigV4 client, STS web identity), and
refused before listening, with one line naming what failed and the key id, for a missing or
wrong key, a denied Decrypt, a tampered ciphertext or manifest."""
from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from authkit import Moto, aws_free_env
from conftest import ROOT
from contexts import mlp_weights
from servedmodel.models.seal import Encryption, publish_sealed
from servedmodel.serving import aws, sealed

X = np.linspace(-1, 1, 784, dtype=np.float32).reshape(1, 784)


def _expected() -> np.ndarray:
    w, b = mlp_weights()
    return X @ w + b


def _seal(plain: Path, out: Path, enc: Encryption) -> dict:
    return publish_sealed("test", plain, out, enc, None)["manifest"]


def _serve(context: Path, env: dict, start_server):
    return start_server(context, env)


def _refused(context: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "serving", "--context", str(context),
                           "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**aws_free_env(), "SERVEDMODEL_LOG_LEVEL": "warning", **env})
    assert proc.returncode != 0, proc.stdout
    assert "starting" not in proc.stdout              # stopped before it listened
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return proc


def _infer(url: str, headers=None) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                        "data": X.ravel().tolist()}]}
    r = httpx.post(url + "/v2/models/test-mlp/infer", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 10)


@pytest.fixture(scope="module")
def local_sealed(contexts, tmp_path_factory):
    base = tmp_path_factory.mktemp("sealed")
    key = base / "model.key"
    out = base / "context"
    manifest = _seal(contexts["mlp"], out, Encryption("local", key_file=key))
    return out, key, manifest


def test_the_sealed_context_holds_no_plaintext(local_sealed, contexts):
    out, key, manifest = local_sealed
    assert sorted(p.name for p in (out / "model").iterdir()) == ["manifest.json", "model.onnx.enc"]
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_bytes()) == 32
    plain = (contexts["mlp"] / "model" / "model.onnx").read_bytes()
    cipher = (out / "model" / "model.onnx.enc").read_bytes()
    assert plain[:4096] not in cipher and plain[-4096:] not in cipher
    block = manifest["encryption"]
    assert block["key"]["key_id"] == sealed.key_fingerprint(key.read_bytes())
    assert key.read_bytes().hex() not in json.dumps(manifest)
    plain_manifest = json.loads((contexts["mlp"] / "model" / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "encryption"} == plain_manifest


def test_the_server_opens_it_in_memory(local_sealed, start_server, tmp_path):
    out, key, _ = local_sealed
    server = start_server(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(key)})
    assert np.allclose(_infer(server.url), _expected(), atol=1e-4)
    # the plaintext is not in the process's open files, and the context has none
    fds = Path(f"/proc/{server.proc.pid}/fd")
    targets = [str(p.readlink()) for p in fds.iterdir() if p.is_symlink()]
    assert not any(t.endswith("model.onnx") for t in targets)
    b64 = tmp_path / "model.key.b64"
    b64.write_text(base64.b64encode(key.read_bytes()).decode() + "\n")
    server = start_server(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(b64)})
    assert np.allclose(_infer(server.url), _expected(), atol=1e-4)
    starting = [json.loads(x) for x in server.log_path.read_text().splitlines()
                if x.startswith('{"event": "starting"')]
    assert starting[0]["encrypted"] is True and starting[0]["decrypt_ms"] > 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_refused_without_its_key_or_with_a_wrong_one(local_sealed, tmp_path):
    out, _, manifest = local_sealed
    key_id = manifest["encryption"]["key"]["key_id"]
    proc = _refused(out, {})
    assert "needs its local key" in proc.stderr and key_id in proc.stderr
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x01" * 32)
    proc = _refused(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(wrong)})
    assert "wrong key" in proc.stderr and key_id in proc.stderr
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    proc = _refused(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(short)})
    assert "a model key is 32 bytes" in proc.stderr
    proc = _refused(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(tmp_path / "missing.key")})
    assert "cannot be read" in proc.stderr


def test_refused_when_tampered(local_sealed, tmp_path):
    out, key, manifest = local_sealed
    env = {"SERVEDMODEL_MODEL_KEY_FILE": str(key)}
    key_id = manifest["encryption"]["key"]["key_id"]
    # a flipped ciphertext byte
    c = _copy(out, tmp_path / "bytes")
    data = bytearray((c / "model" / "model.onnx.enc").read_bytes())
    data[len(data) // 2] ^= 1
    (c / "model" / "model.onnx.enc").write_bytes(bytes(data))
    proc = _refused(c, env)
    assert "tampered or replaced" in proc.stderr and key_id in proc.stderr
    # ... with its recorded hash updated too: the GCM tag still refuses it
    m = json.loads((c / "model" / "manifest.json").read_text())
    import hashlib
    m["encryption"]["ciphertext_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (c / "model" / "manifest.json").write_text(json.dumps(m))
    assert "decryption failed" in _refused(c, env).stderr
    # a manifest changed after encryption (a batching setting): the associated data differs
    c = _copy(out, tmp_path / "manifest")
    m = json.loads((c / "model" / "manifest.json").read_text())
    m["batching"]["max_batch_size"] = 4
    (c / "model" / "manifest.json").write_text(json.dumps(m))
    proc = _refused(c, env)
    assert "manifest was changed" in proc.stderr and key_id in proc.stderr
    # the encryption context rewritten to another version
    c = _copy(out, tmp_path / "context")
    m = json.loads((c / "model" / "manifest.json").read_text())
    m["encryption"]["key"]["encryption_context"]["servedmodel:version"] = "0" * 16
    (c / "model" / "manifest.json").write_text(json.dumps(m))
    assert "does not name this manifest's version" in _refused(c, env).stderr


def test_refused_under_another_served_name(local_sealed):
    out, key, _ = local_sealed
    proc = _refused(out, {"SERVEDMODEL_MODEL_KEY_FILE": str(key),
                          "SERVEDMODEL_MODEL_NAME": "other-name"})
    assert "encrypted for served name 'test-mlp'" in proc.stderr


# -- KMS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield m
    m.close()


@pytest.fixture(scope="module")
def kms_sealed(moto, contexts, tmp_path_factory):
    arn = moto.client("kms").create_key(Description="servedmodel test")["KeyMetadata"]["Arn"]
    out = tmp_path_factory.mktemp("kms") / "context"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in moto.env().items():
            mp.setenv(k, v)              # the pipeline's boto3 calls GenerateDataKey on moto
        manifest = _seal(contexts["mlp"], out, Encryption("kms", kms_key=arn))
    return out, arn, manifest


def test_kms_sealed_context_records_the_key_and_context(kms_sealed):
    _, arn, manifest = kms_sealed
    key = manifest["encryption"]["key"]
    assert (key["provider"], key["key_id"]) == ("kms", arn)
    assert key["encryption_context"] == {"servedmodel:served-name": "test-mlp",
                                         "servedmodel:version": manifest["version"]}


def test_kms_opens_with_static_keys_and_with_web_identity(kms_sealed, moto, start_server,
                                                          tmp_path):
    out, _, _ = kms_sealed
    server = start_server(out, moto.env())
    assert np.allclose(_infer(server.url), _expected(), atol=1e-4)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")      # the projected SA token (IRSA)
    irsa = {"AWS_ENDPOINT_URL": moto.url, "AWS_REGION": moto.REGION,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/servedmodel-pod"}
    server = start_server(out, irsa)
    assert np.allclose(_infer(server.url), _expected(), atol=1e-4)


def test_kms_refusals_name_the_key(kms_sealed, moto, tmp_path):
    out, arn, _ = kms_sealed
    # no identity at all
    proc = _refused(out, {"AWS_ENDPOINT_URL": moto.url})
    assert "no AWS credentials" in proc.stderr and arn in proc.stderr
    # a role in another account: the key is not there for it
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    proc = _refused(out, {"AWS_ENDPOINT_URL": moto.url, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
                          "AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/elsewhere"})
    assert "KMS Decrypt failed" in proc.stderr and arn in proc.stderr
    # the encryption context changed (another version): KMS refuses the ciphertext
    c = _copy(out, tmp_path / "ctx")
    m = json.loads((c / "model" / "manifest.json").read_text())
    m["version"] = m["encryption"]["key"]["encryption_context"]["servedmodel:version"] = "f" * 16
    (c / "model" / "manifest.json").write_text(json.dumps(m))
    proc = _refused(c, moto.env())
    assert "InvalidCiphertextException" in proc.stderr and arn in proc.stderr


def test_kms_decrypt_denied_by_iam_and_signatures_checked(contexts, tmp_path):
    """moto with IAM checks on: it verifies the SigV4 signature of every call (botocore's own
    algorithm) and the caller's policy. An identity allowed kms:Decrypt serves; one without it
    is refused (AccessDenied), and so is a wrong secret (SignatureDoesNotMatch)."""
    moto = Moto(tmp_path / "moto.log")
    try:
        iam = moto.client("iam")
        arn = moto.client("kms").create_key()["KeyMetadata"]["Arn"]
        out = tmp_path / "context"
        with pytest.MonkeyPatch.context() as mp:
            for k, v in moto.env().items():
                mp.setenv(k, v)
            _seal(contexts["mlp"], out, Encryption("kms", kms_key=arn))
        keys = {}
        for name, action in (("pod", "kms:Decrypt"), ("other", "kms:DescribeKey")):
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": [action], "Resource": "*"}]}))
            keys[name] = iam.create_access_key(UserName=name)["AccessKey"]
        assert httpx.post(moto.url + "/moto-api/reset-auth", content=b"0").status_code == 200

        def env(name, secret=None):
            return {"AWS_ENDPOINT_URL": moto.url, "AWS_ACCESS_KEY_ID": keys[name]["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": secret or keys[name]["SecretAccessKey"]}
        plain = aws.kms_decrypt  # the server's client, called as the server calls it
        m = json.loads((out / "model" / "manifest.json").read_text())
        blob = base64.b64decode(m["encryption"]["key"]["wrapped_key"])
        context = m["encryption"]["key"]["encryption_context"]
        assert len(plain(arn, blob, context, env("pod"))) == 32
        with pytest.raises(aws.AwsError) as e:
            plain(arn, blob, context, env("pod", "wrong-secret"))
        assert e.value.code == "SignatureDoesNotMatch"
        proc = _refused(out, env("other"))
        assert "AccessDenied" in proc.stderr and "kms:Decrypt" in proc.stderr and arn in proc.stderr
    finally:
        moto.close()


def test_sigv4_matches_botocore():
    """The server's signer and botocore's sign the same request identically (same time)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    body = b'{"KeyId":"k","CiphertextBlob":"AAAA"}'
    url = "https://kms.eu-west-1.amazonaws.com/"
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "TrentService.Decrypt"}
    for token in (None, "session-token"):
        request = AWSRequest("POST", url, data=body, headers=dict(headers))
        SigV4Auth(BotoCredentials("AKIDEXAMPLE", "secret/key", token), "kms",
                  "eu-west-1").add_auth(request)
        when = datetime.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ") \
            .replace(tzinfo=datetime.UTC)
        ours = aws.sign("POST", url, headers, body,
                        aws.Credentials("AKIDEXAMPLE", "secret/key", token), "eu-west-1", "kms", when)
        assert ours["authorization"] == request.headers["Authorization"]


def test_container_credentials_only_from_the_agent_or_https():
    with pytest.raises(aws.AwsError, match="must be https"):
        aws.credentials({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://evil.example/creds"},
                        "us-east-1")
