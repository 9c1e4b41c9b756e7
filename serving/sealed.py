"""An encrypted model, opened in memory at start (docs/architecture.md, "Encrypted models").

The manifest's `encryption` block (written by models/seal.py) names the ciphertext file, its
nonce and hash, and the data key wrapped either by KMS (the pod's identity calls Decrypt with
the encryption context: served name + version) or by a local key (SERVEDMODEL_MODEL_KEY_FILE,
32 bytes raw or base64). The model is AES-256-GCM under the data key, with the hash of the
manifest (without the block) as associated data, so a changed manifest fails like a changed
ciphertext. Its plaintext exists only in this process's memory: onnxruntime loads it from
bytes. Every failure is a StartupError naming what failed and the key id, before the server
listens.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from pathlib import Path

from . import contract
from .errors import StartupError

ALGORITHM = "AES-256-GCM"
#: Associated data of the model's ciphertext: this prefix, a NUL, and the sha256 (hex) of the
#: canonical manifest without its `encryption` block (`manifest_digest`).
AAD_PREFIX = b"servedmodel-model-v1\0"
_FILE = re.compile(r"^[A-Za-z0-9_.-]+$")


def manifest_digest(manifest: dict) -> str:
    """sha256 (hex) of the manifest without `encryption`: canonical JSON (sorted keys, no
    spaces, ASCII). models/seal.py computes the same; a test keeps the two in step."""
    core = {k: v for k, v in manifest.items() if k != "encryption"}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def context_bytes(context: dict[str, str]) -> bytes:
    """The encryption context as the local key's associated data (sorted, canonical)."""
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


def read_local_key(path: Path) -> bytes:
    """A 32-byte key: the file's raw bytes, or base64 text of them."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StartupError(f"SERVEDMODEL_MODEL_KEY_FILE {path} cannot be read: "
                           f"{e.strerror}") from None
    if len(data) == 32:
        return data
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StartupError(f"SERVEDMODEL_MODEL_KEY_FILE {path} holds {len(data)} bytes: a model "
                           f"key is 32 bytes, raw or base64")
    return key


def key_fingerprint(key: bytes) -> str:
    """The local key's id in the manifest: `local:` + 16 hex of its sha256."""
    return "local:" + hashlib.sha256(key).hexdigest()[:16]


def _b64(block: dict, name: str, what: str) -> bytes:
    try:
        return base64.b64decode(str(block.get(name, "")), validate=True)
    except (binascii.Error, ValueError):
        raise StartupError(f"encrypted model: {what} is not base64 (tampered manifest?)") from None


def open_model(context_dir: Path, manifest: dict, served_name: str, key_file: Path | None,
               env=None) -> bytes:
    """The plaintext model bytes of an encrypted context (checked against the manifest's
    sha256). Raises StartupError with one line naming what failed."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    block = manifest.get("encryption")
    block = block if isinstance(block, dict) else {}
    key = block.get("key")
    if not isinstance(key, dict) or block.get("algorithm") != ALGORITHM:
        raise StartupError(f"encrypted model: the manifest's encryption block is not "
                           f"{ALGORITHM} with a key (tampered manifest?)")
    key_id, provider = str(key.get("key_id", "?"))[:200], key.get("provider")
    context = key.get("encryption_context")
    name_key, version_key = contract.ENCRYPTION_CONTEXT_NAME, contract.ENCRYPTION_CONTEXT_VERSION
    if not isinstance(context, dict) or context.get(version_key) != manifest.get("version"):
        raise StartupError(f"encrypted model (key {key_id}): the encryption context does not "
                           f"name this manifest's version (tampered manifest?)")
    if context.get(name_key) != served_name:
        raise StartupError(f"encrypted model (key {key_id}): it was encrypted for served name "
                           f"{context.get(name_key)!r}, this server serves {served_name!r} "
                           f"(SERVEDMODEL_MODEL_NAME); build it for this name")
    file = str(block.get("file", ""))
    if not _FILE.match(file) or file.startswith("."):
        raise StartupError(f"encrypted model (key {key_id}): file {file[:64]!r} must be a plain "
                           f"file name inside model/")
    path = Path(context_dir) / "model" / file
    try:
        ciphertext = path.read_bytes()
    except OSError as e:
        raise StartupError(f"encrypted model (key {key_id}): {path} cannot be read: "
                           f"{e.strerror}") from None
    wrapped = _b64(key, "wrapped_key", "the wrapped key")
    data_key = _unwrap(provider, key_id, wrapped, key, context, key_file, env)
    nonce = _b64(block, "nonce", "the nonce")
    aad = AAD_PREFIX + manifest_digest(manifest).encode()
    try:
        # The GCM tag authenticates the ciphertext and the manifest (the associated data, which
        # holds the plaintext's sha256, checked when it was sealed): no hash is computed on the
        # way in, so opening costs about one pass of AES (docs/benchmarks.md, "Encrypted model").
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        pass
    # Which of the two was changed, for the one line the operator reads (failures only).
    if not hmac.compare_digest(hashlib.sha256(ciphertext).hexdigest(),
                               str(block.get("ciphertext_sha256", ""))):
        raise StartupError(f"encrypted model (key {key_id}): {path} is not the ciphertext the "
                           f"manifest names (sha256 mismatch: tampered or replaced)")
    raise StartupError(f"encrypted model (key {key_id}): decryption failed: the manifest was "
                       f"changed after encryption (its hash is the ciphertext's associated data)")


def _unwrap(provider, key_id: str, wrapped: bytes, key: dict, context: dict,
            key_file: Path | None, env) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if provider == "local":
        if key_file is None:
            raise StartupError(f"encrypted model (key {key_id}): it needs its local key; set "
                               f"SERVEDMODEL_MODEL_KEY_FILE")
        local = read_local_key(key_file)
        if key_fingerprint(local) != key_id:
            raise StartupError(f"encrypted model (key {key_id}): wrong key: "
                               f"SERVEDMODEL_MODEL_KEY_FILE holds {key_fingerprint(local)}")
        try:
            data_key = AESGCM(local).decrypt(_b64(key, "wrap_nonce", "the wrap nonce"), wrapped,
                                             context_bytes(context))
        except (InvalidTag, ValueError):
            raise StartupError(f"encrypted model (key {key_id}): the data key cannot be "
                               f"unwrapped (its encryption context or wrapped key was "
                               f"changed)") from None
    elif provider == "kms":
        from .aws import AwsError, kms_decrypt

        try:
            data_key = kms_decrypt(key_id, wrapped, context, env)
        except AwsError as e:
            raise StartupError(f"encrypted model (key {key_id}): KMS Decrypt failed: "
                               f"{e}") from None
    else:
        raise StartupError(f"encrypted model (key {key_id}): unknown key provider "
                           f"{str(provider)[:32]!r} (kms, local)")
    if len(data_key) != 32:
        raise StartupError(f"encrypted model (key {key_id}): the data key is {len(data_key)} "
                           f"bytes, not 32")
    return data_key
