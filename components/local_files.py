"""The files the docker target mounts into its container: the model's local key and the clients
document (issue 21; docs/deploy.md, "Encryption" and "The local stack's key").

Both live beside the build contexts, in `<build root>/.keys/` (build/stacks/<stack>/.keys/ for a
stack: ignored by git, as all of build/ is), a folder of mode 0700, each file of mode 0600. The
container runs as a user that owns them, so nothing is loosened to let it read:
- `up` as a non-root user: the container runs as that user's uid:gid (the image's files are
  root-owned and world-readable, /tmp is a tmpfs: it needs no other user);
- `up` as root: the files are given to the image's user (uid 10001, mode 0600 kept), and the
  container runs as that user, as it always did; the 0700 folder, root's, keeps every other
  account of the machine out.
The Docker engine bind-mounts each file read-only; the path inside the container is fixed
(specs.LOCAL_KEY_PATH, specs.LOCAL_CLIENTS_PATH).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .specs import RUN_AS

KEYS_FOLDER = ".keys"


def keys_dir(out_dir: Path) -> Path:
    """Where a model's local files go: beside its build context (never inside it: the build
    replaces that folder whole)."""
    return Path(out_dir).parent / KEYS_FOLDER


def private_dir(path: Path) -> Path:
    """The folder, made when missing, with mode 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def key_file(out_dir: Path, served_name: str) -> Path:
    """The model's local key: models.build creates it (32 random bytes, mode 0600) when missing."""
    return private_dir(keys_dir(out_dir)) / f"{served_name}.key"


def container_user() -> str:
    """The user the container runs as when it reads files of this machine (module docstring)."""
    uid = os.getuid()
    return str(RUN_AS) if uid == 0 else f"{uid}:{os.getgid()}"


def give_to_container(path: Path) -> None:
    """Make `path` readable by the container user only (mode 0600; owner: see container_user)."""
    os.chmod(path, 0o600)
    if os.getuid() == 0:
        os.chown(path, RUN_AS, RUN_AS)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600, owned as give_to_container says."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        give_to_container(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
