"""`python -m models build --encrypt local|kms`: the context written to --out holds only the
ciphertext, the version stays the plaintext's, a rebuild keeps the bytes (sealed cache), and
the KMS path runs against moto in server mode on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from conftest import cli_json, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from authkit import Moto
from servedmodel.models import seal
from servedmodel.serving import sealed as server_sealed

pytestmark = pytest.mark.slow


def _files(context: Path) -> dict[str, str]:
    return {str(p.relative_to(context)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(context.rglob("*")) if p.is_file()}


def test_the_two_worlds_agree_on_the_format(build_once):
    manifest = build_once("mnist-mlp").manifest
    assert seal.manifest_digest(manifest) == server_sealed.manifest_digest(manifest)
    assert seal.manifest_digest({**manifest, "encryption": {"x": 1}}) == seal.manifest_digest(manifest)
    assert seal.AAD_PREFIX == server_sealed.AAD_PREFIX and seal.ALGORITHM == server_sealed.ALGORITHM


def test_encrypt_local(build_once, cache_dir, tmp_path):
    plain = build_once("mnist-mlp")
    key = tmp_path / "keys" / "model.key"
    key.parent.mkdir()
    out = tmp_path / "enc"
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(out), "--encrypt", "local",
                   "--key-file", str(key), "--json", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    result = cli_json(proc)
    assert result["version"] == plain.version                       # the plaintext's
    assert result["encryption"]["provider"] == "local"
    assert result["encryption"]["key_id"] == seal.key_fingerprint(key.read_bytes())
    assert result["startup"]["decrypt_seconds"] >= 0
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_bytes()) == 32
    files = _files(out)
    assert "model/model.onnx" not in files and "model/model.onnx.enc" in files
    assert {p: h for p, h in files.items() if not p.startswith("model/")} == \
        {p: h for p, h in _files(plain.context_dir).items() if not p.startswith("model/")}
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["version"] == plain.version and manifest["sha256"] == plain.manifest["sha256"]
    plaintext = (plain.context_dir / "model" / "model.onnx").read_bytes()
    opened = server_sealed.open_model(out, manifest, "mnist-mlp", key)
    assert opened == plaintext
    # again: the same bytes (an unchanged model stays a no-op for the image)
    again = run_cli("build", "--model", "mnist-mlp", "--out", str(out), "--encrypt", "local",
                    "--key-file", str(key), "--json", cache_dir=cache_dir)
    assert again.returncode == 0 and _files(out) == files
    assert "sealed context reused" in again.stderr
    # without the cache: sealed anew, same version, other ciphertext
    fresh = tmp_path / "fresh"
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(fresh), "--encrypt", "local",
                   "--key-file", str(key), "--no-cache", "--json", cache_dir=cache_dir)
    assert proc.returncode == 0 and cli_json(proc)["version"] == plain.version
    assert _files(fresh)["model/model.onnx.enc"] != files["model/model.onnx.enc"]
    # and without --encrypt, as before
    clear = tmp_path / "clear"
    assert run_cli("build", "--model", "mnist-mlp", "--out", str(clear), cache_dir=cache_dir).returncode == 0
    assert _files(clear) == _files(plain.context_dir)


@pytest.mark.parametrize("args, words", [
    (["--encrypt", "kms"], "--kms-key"),
    (["--encrypt", "kms", "--kms-key", "alias/x"], "ARN"),
    (["--key-file", "k"], "choose one of local, kms"),
    (["--encrypt", "local"], "--key-file"),
])
def test_encrypt_usage_errors(cache_dir, tmp_path, args, words):
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(tmp_path / "o"), *args, cache_dir=cache_dir)
    assert proc.returncode == 2 and words in proc.stderr


def test_encrypt_kms_against_moto(build_once, cache_dir, tmp_path, monkeypatch):
    plain = build_once("mnist-mlp")
    moto = Moto(tmp_path / "moto.log")
    try:
        arn = moto.client("kms").create_key()["KeyMetadata"]["Arn"]
        for k, v in moto.env().items():
            monkeypatch.setenv(k, v)
        out = tmp_path / "kms"
        proc = run_cli("build", "--model", "mnist-mlp", "--out", str(out), "--encrypt", "kms",
                       "--kms-key", arn, "--served-name", "digits", "--json", cache_dir=cache_dir)
        assert proc.returncode == 0, proc.stderr
        result = cli_json(proc)
        assert result["encryption"]["key_id"] == arn and result["version"] == plain.version
        assert result["encryption"]["encryption_context"] == {
            "servedmodel:served-name": "digits", "servedmodel:version": plain.version}
        manifest = json.loads((out / "model" / "manifest.json").read_text())
        assert "Plaintext" not in json.dumps(manifest)
        opened = server_sealed.open_model(out, manifest, "digits", None, env=moto.env())
        assert opened == (plain.context_dir / "model" / "model.onnx").read_bytes()
        # KMS refuses (no such key): exit 10, and --out keeps what it had (never plaintext)
        before = _files(out)
        missing = arn.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
        proc = run_cli("build", "--model", "mnist-mlp", "--out", str(out), "--encrypt", "kms",
                       "--kms-key", missing, "--served-name", "other", cache_dir=cache_dir)
        assert proc.returncode == 10 and "encrypt failed" in proc.stderr and missing in proc.stderr
        assert _files(out) == before
    finally:
        moto.close()
