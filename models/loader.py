"""Resolve a model reference — a zoo name or "path/to/file.py:factory" — to a ModelSpec."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_USAGE, BuildError, SpecError
from .spec import ModelSpec
from .zoo import ZOO


@dataclass(frozen=True)
class ModelRef:
    """A parsed --model value. `source` is the factory file for "file" refs (its bytes are
    part of the cache key; for the zoo, the models/ sources are)."""

    ref: str
    kind: str  # "zoo" | "file"
    factory: str  # "module:function" (zoo) or the function name (file)
    source: Path | None = None


def is_model_ref(ref: object) -> bool:
    """The grammar alone: a zoo name or `path/to/file.py:factory` (the file need not exist yet).

    `parse_ref` applies the same grammar and then resolves the file; the stack config and the
    component args check references with this function, so the grammar lives here only."""
    if not isinstance(ref, str):
        return False
    if ref in ZOO:
        return True
    path, sep, factory = ref.rpartition(":")
    return bool(sep) and path.endswith(".py") and factory.isidentifier()


def parse_ref(ref: str) -> ModelRef:
    """Raises BuildError(step="load", exit code 2) for unknown names and missing files."""
    if not isinstance(ref, str) or not ref.strip():
        raise BuildError(str(ref), "load", "empty model reference; give a zoo name "
                         f"({', '.join(ZOO)}) or path/to/file.py:factory", EXIT_USAGE)
    if ref in ZOO:
        return ModelRef(ref, "zoo", ZOO[ref][0])
    path, sep, factory = ref.rpartition(":")
    if sep and path.endswith(".py"):
        if not factory.isidentifier():
            raise BuildError(ref, "load", f"{factory!r} is not a Python function name", EXIT_USAGE)
        p = Path(path).expanduser()
        if not p.is_file():
            raise BuildError(ref, "load", f"model file not found: {path}", EXIT_USAGE)
        return ModelRef(ref, "file", factory, p.resolve())
    if ref.endswith(".py"):
        raise BuildError(ref, "load", f"name the factory: {ref}:FUNCTION", EXIT_USAGE)
    raise BuildError(ref, "load", f"unknown model; the zoo has {', '.join(ZOO)} "
                     "(or give path/to/file.py:factory)", EXIT_USAGE)


def _import_file(mref: ModelRef):
    source = mref.source
    assert source is not None  # a "file" ref
    name = f"servedmodel_user_{abs(hash(str(source))):x}"
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise BuildError(mref.ref, "factory", f"{source.name} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    # The factory's folder is importable while it loads, so it can import its neighbours.
    sys.path.insert(0, str(source.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C while the file imports: interrupted, not a factory error
            raise
        raise BuildError(mref.ref, "factory", f"importing {source.name} raised {type(e).__name__}: {e}") from None
    finally:
        try:
            sys.path.remove(str(source.parent))
        except ValueError:
            pass
    return module


def load_spec(mref: ModelRef):
    """Import the factory and call it. Exit code 2 when the factory is missing, 3 when it
    raises or returns something that is not a valid ModelSpec."""
    if mref.kind == "zoo":
        mod_name, func_name = mref.factory.split(":")
        module = importlib.import_module(mod_name, package=f"{__package__}.zoo")
    else:
        module, func_name = _import_file(mref), mref.factory
    factory = getattr(module, func_name, None)
    if factory is None:
        raise BuildError(mref.ref, "load", f"{func_name!r} not found in {mref.source or mref.factory}", EXIT_USAGE)
    if not callable(factory):
        raise BuildError(mref.ref, "load", f"{func_name!r} is not callable", EXIT_USAGE)
    try:
        spec = factory()
    except SpecError as e:
        raise BuildError(mref.ref, "factory", str(e)) from None
    except BaseException as e:  # noqa: BLE001 - user code may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        raise BuildError(mref.ref, "factory", f"{func_name}() raised {type(e).__name__}: {e}") from None
    if not isinstance(spec, ModelSpec):
        raise BuildError(mref.ref, "factory", f"{func_name}() returned {type(spec).__name__}, not a models.ModelSpec")
    return spec
