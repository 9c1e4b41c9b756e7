"""The serving image with the issue-21 pieces, for real: an encrypted model (local key mounted
read-only) opened in memory inside the container, named clients and OIDC (PyJWT and
cryptography as the image installed them, RS256 against an issuer on 127.0.0.1), the audit
stream on stdout; and the same image without its key stops before it listens."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from imagekit import REPO, Container, build_image, docker, inspect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from authkit import AUDIENCE, Issuer, clients_file

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def sealed_image(images, tmp_path_factory):
    """mnist-mlp built with --encrypt local, and its image."""
    import servedmodel.models as models

    plain = images.get("mnist-mlp")
    base = tmp_path_factory.mktemp("sealed")
    key = base / "model.key"
    result = models.build("mnist-mlp", out_dir=base / "context",
                          encryption=models.Encryption("local", key_file=key))
    assert result.version == plain.version
    tag = f"{REPO}/mnist-mlp:{result.version}-sealed"
    build_image(result.context_dir, tag)
    # As a Kubernetes Secret volume shows it to the pod's group (fsGroup 10001, mode 0440).
    mounted = base / "mounted.key"
    mounted.write_bytes(key.read_bytes())
    mounted.chmod(0o444)
    return tag, mounted, plain


def test_image_has_no_plaintext_model(sealed_image):
    tag, _, _ = sealed_image
    listing = docker("run", "--rm", "--network", "host", "--entrypoint", "ls", tag, "/app/model").stdout.split()
    assert sorted(listing) == ["manifest.json", "model.onnx.enc"]


def test_encrypted_model_clients_oidc_and_audit_in_the_container(sealed_image, tmp_path):
    tag, key, plain = sealed_image
    issuer = Issuer()
    issuer.add_key("k1")
    clients = clients_file(tmp_path / "clients.json", {"app": ["app-token-1"]})
    clients.chmod(0o444)
    c = Container(tag, "-v", f"{key}:/run/secrets/model.key:ro",
                  "-v", f"{clients}:/run/secrets/clients.json:ro",
                  env={"SERVEDMODEL_MODEL_KEY_FILE": "/run/secrets/model.key",
                       "SERVEDMODEL_CLIENTS_FILE": "/run/secrets/clients.json",
                       "SERVEDMODEL_OIDC_ISSUER": issuer.url, "SERVEDMODEL_OIDC_AUDIENCE": AUDIENCE,
                       "SERVEDMODEL_AUDIT_LOG": "-", "SERVEDMODEL_DRAIN_SECONDS": "1"})
    try:
        c.wait_ready()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{c.port}")
        x = np.random.default_rng(5).random((2, 784), dtype=np.float32)
        expected = ort.InferenceSession(str(plain.context / "model" / "model.onnx"),
                                        providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for header in ("Bearer app-token-1", f"Bearer {issuer.token('k1', azp='job-7')}"):
            inp = httpclient.InferInput("input", [2, 784], "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("mnist-mlp", [inp], headers={"Authorization": header}).as_numpy("logits")
            np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
        docker("stop", "--time", "15", c.id, timeout=45)
        assert inspect(c.id, "{{json .State.ExitCode}}") == 0
        records = [json.loads(x) for x in c.logs().splitlines() if x.startswith('{"log":"audit"')]
        assert [(r["client"], r["auth"], r["status"]) for r in records] == [
            ("app", "token", 200), ("job-7", "jwt", 200)]
    finally:
        c.remove()
        issuer.close()


def test_without_its_key_the_container_stops_before_listening(sealed_image):
    tag, _, _ = sealed_image
    c = Container(tag)
    try:
        deadline = time.monotonic() + 60
        while inspect(c.id, "{{json .State.Running}}") and time.monotonic() < deadline:
            time.sleep(0.2)
        state = inspect(c.id, "{{json .State}}")
        assert state["ExitCode"] == 1
        lines = [x for x in c.logs().splitlines() if x.strip()]
        assert len(lines) == 1 and "needs its local key" in lines[0] and "local:" in lines[0]
    finally:
        c.remove()
