"""Encryption of the model in the build context (`--encrypt local|kms`): AES-256-GCM under a
fresh data key, the data key wrapped by a local key file or by AWS KMS (GenerateDataKey) with
the encryption context {served name, version}. The server opens it in memory
(serving/sealed.py); the format is docs/architecture.md, "Encrypted models".

What stays as before: the build cache holds the PLAINTEXT context, keyed and hashed as always,
and `version` is the content hash of that plaintext, so caching, versions and image tags do not
change with encryption. Sealing happens when the context is written to --out: the staged folder
gets `model/model.onnx.enc` (instead of `model/model.onnx`) and a manifest with an `encryption`
block, and is renamed into place, so --out never holds the plaintext of an encrypted build.

Why sealed contexts are cached too: AES-GCM under a fresh key and nonce (and KMS's wrapping) is
not deterministic, so sealing again would give other bytes, another image digest and a rollout
of an unchanged model on every `pulumi up`. The first sealing of a version under a key is kept
(<cache>/sealed/, keyed on version, served name and key id) and reused byte for byte; nonces
are never reused for other plaintext (the same ciphertext is reused, not re-encrypted). Without
the cache (--no-cache, a fresh CI machine) a rebuild seals anew: same version and tag, new bytes
and image digest.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract
from .errors import BuildError

ENCRYPTIONS = ("local", "kms")
ALGORITHM = "AES-256-GCM"
SEALED_FILE = "model.onnx.enc"
#: Must equal serving/sealed.py's AAD_PREFIX (tests/models/test_models_seal.py opens what this
#: module seals with the server's code).
AAD_PREFIX = b"servedmodel-model-v1\0"
_KMS_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[A-Za-z0-9/_:-]+$")


@dataclass(frozen=True)
class Encryption:
    """How to encrypt the model: `local` with `key_file` (created, mode 0600, when it does not
    exist) or `kms` with `kms_key` (a key or alias ARN). `served_name`: the name the server
    answers under, bound into the encryption context (default: the model's name)."""
    mode: str
    key_file: Path | None = None
    kms_key: str | None = None
    served_name: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in ENCRYPTIONS:
            problems.append(f"--encrypt {self.mode!r}: choose one of {', '.join(ENCRYPTIONS)}")
        if self.mode == "local" and self.key_file is None:
            problems.append("--encrypt local needs --key-file PATH (created when missing)")
        if self.mode == "kms" and not (self.kms_key and _KMS_ARN.match(self.kms_key)):
            problems.append(f"--encrypt kms needs --kms-key with a KMS key or alias ARN "
                            f"(arn:aws:kms:REGION:ACCOUNT:key/ID), not {self.kms_key!r}")
        if (self.mode == "local" and self.kms_key) or (self.mode == "kms" and self.key_file):
            problems.append("--key-file goes with --encrypt local, --kms-key with --encrypt kms")
        if problems:
            raise ValueError("; ".join(problems))


def manifest_digest(manifest: dict[str, Any]) -> str:
    """As serving/sealed.py's: sha256 of the canonical manifest without `encryption`."""
    core = {k: v for k, v in manifest.items() if k != "encryption"}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def key_fingerprint(key: bytes) -> str:
    return "local:" + hashlib.sha256(key).hexdigest()[:16]


def local_key(model: str, path: Path) -> bytes:
    """The local key at `path`; a new random one (32 bytes, mode 0600) when the file does not
    exist. Raw 32 bytes or base64 of them are read."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise BuildError(model, "encrypt", f"cannot create the key file {path}: {e.strerror}") from None
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BuildError(model, "encrypt", f"cannot read the key file {path}: {e.strerror}") from None
    if len(data) == 32:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BuildError(model, "encrypt", f"the key file {path} holds {len(data)} bytes: a key is 32 bytes, "
                         "raw or base64")
    return key


def _context_bytes(context: dict[str, str]) -> bytes:
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


def _data_key(model: str, enc: Encryption, context: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """A fresh data key and the manifest's `key` block (wrapped key, key id, context)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if enc.mode == "local":
        assert enc.key_file is not None     # (checked by Encryption, as kms_key below)
        local = local_key(model, enc.key_file)
        data_key, nonce = os.urandom(32), os.urandom(12)
        wrapped = AESGCM(local).encrypt(nonce, data_key, _context_bytes(context))
        return data_key, {"provider": "local", "key_id": key_fingerprint(local), "wrap_algorithm": ALGORITHM,
                          "wrapped_key": base64.b64encode(wrapped).decode(),
                          "wrap_nonce": base64.b64encode(nonce).decode(), "encryption_context": context}
    import boto3
    import botocore.exceptions

    assert enc.kms_key is not None
    region = enc.kms_key.split(":")[3]
    try:
        answer = boto3.client("kms", region_name=region).generate_data_key(
            KeyId=enc.kms_key, KeySpec="AES_256", EncryptionContext=context)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        raise BuildError(model, "encrypt", f"KMS GenerateDataKey with {enc.kms_key}: {e}") from None
    return answer["Plaintext"], {"provider": "kms", "key_id": answer["KeyId"], "wrap_algorithm": "AWS-KMS",
                                 "wrapped_key": base64.b64encode(answer["CiphertextBlob"]).decode(),
                                 "encryption_context": context}


def seal(model: str, model_bytes: bytes, manifest: dict[str, Any], enc: Encryption) -> tuple[bytes, dict[str, Any]]:
    """(ciphertext, the manifest with its `encryption` block) for a plaintext model."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if hashlib.sha256(model_bytes).hexdigest() != manifest["sha256"]:
        raise BuildError(model, "encrypt", "the model file is not the one the manifest names")
    context = {contract.ENCRYPTION_CONTEXT_NAME: enc.served_name or manifest["name"],
               contract.ENCRYPTION_CONTEXT_VERSION: manifest["version"]}
    data_key, key_block = _data_key(model, enc, context)
    nonce = os.urandom(12)
    aad = AAD_PREFIX + manifest_digest(manifest).encode()
    ciphertext = AESGCM(data_key).encrypt(nonce, model_bytes, aad)
    sealed = dict(manifest)
    sealed["encryption"] = {"algorithm": ALGORITHM, "file": SEALED_FILE,
                            "nonce": base64.b64encode(nonce).decode(),
                            "aad": "servedmodel-model-v1: sha256 of the manifest without 'encryption'",
                            "ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(),
                            "ciphertext_bytes": len(ciphertext), "key": key_block}
    return ciphertext, sealed


def decrypt_seconds(model_bytes: bytes) -> float:
    """What opening the model costs the server on this machine: AES-256-GCM decryption (and tag
    check) of a ciphertext of this size; the key unwrap (one KMS call, or 32 bytes) is not
    counted. Timed with a throwaway key: the cost depends on the size only."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    ciphertext = aead.encrypt(nonce, model_bytes, b"measure")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        aead.decrypt(nonce, ciphertext, b"measure")
        best = min(best, time.perf_counter() - t0)
    return round(best, 4)


# -- the sealed cache ---------------------------------------------------------------------------
def _sealed_key(manifest: dict[str, Any], enc: Encryption, key_id: str) -> str:
    ident = [manifest["version"], manifest["sha256"], enc.served_name or manifest["name"], enc.mode, key_id]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


def _lookup(root: Path, key: str, manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any], int] | None:
    """A sealed entry whose ciphertext and manifest still match (else None: seal again)."""
    d = root / "sealed" / key[:32]
    try:
        record = json.loads((d / "record.json").read_text())
        ciphertext = (d / SEALED_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    sealed = record.get("manifest") if isinstance(record, dict) else None
    if not isinstance(sealed, dict) or record.get("key") != key:
        return None
    if {k: v for k, v in sealed.items() if k != "encryption"} != manifest:
        return None
    if sealed.get("encryption", {}).get("ciphertext_sha256") != hashlib.sha256(ciphertext).hexdigest():
        return None
    return ciphertext, sealed, int(record.get("layer_gzip_bytes", 0))


def _store(root: Path, key: str, ciphertext: bytes, sealed: dict[str, Any], layer_bytes: int) -> None:
    d = root / "sealed" / key[:32]
    tmp = None
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        (tmp / SEALED_FILE).write_bytes(ciphertext)
        (tmp / "record.json").write_text(json.dumps({"key": key, "manifest": sealed,
                                                     "layer_gzip_bytes": layer_bytes}))
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:
        pass      # a cache that cannot be written only costs the next build a new sealing
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_sealed(model: str, plain: Path, out: Path, enc: Encryption, cache_root: Path | None) -> dict[str, Any]:
    """Write the encrypted context of the plaintext context `plain` to `out` (atomically).
    Returns {"manifest", "decrypt_seconds", "model_layer_gzip_bytes", "sealed_cache_hit"}."""
    from .package import manifest_bytes, publish_files
    from .startup import model_layer_bytes

    manifest = json.loads((plain / "model" / "manifest.json").read_text())
    model_bytes = (plain / "model" / manifest["model_file"]).read_bytes()
    key_id = key_fingerprint(local_key(model, enc.key_file)) if enc.key_file is not None else enc.kms_key
    assert key_id is not None           # (the mode's key: checked by Encryption)
    key = _sealed_key(manifest, enc, key_id)
    hit = _lookup(cache_root, key, manifest) if cache_root is not None else None
    if hit is not None:
        ciphertext, sealed, layer_bytes = hit
    else:
        ciphertext, sealed = seal(model, model_bytes, manifest, enc)
        layer_bytes = 0
    files = {str(p.relative_to(plain)): p.read_bytes() for p in sorted(plain.rglob("*")) if p.is_file()}
    del files[f"model/{manifest['model_file']}"]
    files[f"model/{SEALED_FILE}"] = ciphertext
    files["model/manifest.json"] = manifest_bytes(sealed)
    publish_files(model, out, files)
    if not layer_bytes:
        layer_bytes = model_layer_bytes(out)
    if hit is None and cache_root is not None:
        _store(cache_root, key, ciphertext, sealed, layer_bytes)
    return {"manifest": sealed, "decrypt_seconds": decrypt_seconds(model_bytes),
            "model_layer_gzip_bytes": layer_bytes, "sealed_cache_hit": hit is not None}
