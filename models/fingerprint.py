"""The spec fingerprint: what a factory returned, as one hash, for the build's cache key.

A factory may read anything (its weights file, evaluation data, the environment), so its source
bytes cannot say what it returns: a retrained `tagger.pt` leaves the factory file as it was. The
pipeline therefore calls the factory on every build and keys the cache on this fingerprint of the
`ModelSpec` it returned, so a build whose spec changed is never served from the cache.

What it covers, field by field of the ModelSpec (every field, so a new field is covered too):
- the module: every parameter and buffer (name, dtype, shape, bytes), every other attribute of
  every submodule (numbers, strings, plain tensors, config objects, followed OBJECT_DEPTH deep),
  forward hooks, and the code of each submodule's class and base classes: the bytes of the .py
  file that defines it and of the .py files its names come from (one import away);
- tensors and numpy arrays anywhere in the spec (example, verification, calibration, evaluation
  and fine-tuning data, targets) by dtype, shape and bytes;
- callables (a metric or loss function): their code (co_code, names, constants), defaults,
  closure contents and the .py file they come from (again one import away);
- every other value (names, tolerances, evaluation and prune options, request bounds) by value.

What it cannot see is listed in docs/pipeline.md ("What the version covers"): code two imports
away from a class or callable, compiled extensions (named, not hashed), anything read while
the model runs rather than when the factory builds it (a file or environment variable read inside
forward), torch's global settings, and state held by objects deeper than OBJECT_DEPTH.

Values are encoded canonically (sets and mappings sorted, ids and memory addresses never used),
so the same spec built in another process gives the same fingerprint.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import sys
import types
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping

FORMAT = "servedmodel-spec-fingerprint-1"
# Plain objects (a transformers config on a module, a metric object's state) are followed this
# many levels deep; deeper ones are named by their class only.
OBJECT_DEPTH = 6
# nn.Module bookkeeping that is not what the module computes (state-dict and backward hooks,
# the training flag: export and verification put the module in eval mode). Parameters, buffers,
# children and forward hooks are encoded on their own.
_MODULE_BOOKKEEPING = frozenset({
    "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training",
    "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
})
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                  "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_PRIMITIVES = (bool, int, float, complex, str)


@dataclass(frozen=True)
class Fingerprint:
    """`digest`: sha256 hex over every part; `parts`: ModelSpec field name -> sha256 hex of its
    value, so that a changed build can say which fields changed."""

    digest: str
    parts: Mapping[str, str]

    def changed_parts(self, previous: Mapping[str, str]) -> list[str]:
        """The fields whose value differs from `previous` (a recorded `parts`)."""
        return sorted(k for k in set(self.parts) | set(previous) if self.parts.get(k) != previous.get(k))


def spec_fingerprint(spec: Any) -> Fingerprint:
    """The fingerprint of a ModelSpec (see the module docstring for what it covers)."""
    # Imported here, not at the top: `import models` must not load torch (the CLI's usage
    # errors and the components' config checks stay fast); a spec exists only once it has.
    import numpy
    import torch

    encoder = _Encoder(torch, numpy)
    parts = {f.name: encoder.digest(getattr(spec, f.name)) for f in dataclasses.fields(spec)}
    h = hashlib.sha256(FORMAT.encode())
    for name in sorted(parts):
        h.update(f"{name}={parts[name]};".encode())
    return Fingerprint(h.hexdigest(), parts)


class _Encoder:
    """Feeds a canonical encoding of a value into a sha256. One encoder per fingerprint: it
    memoises tensor and source-file digests (tied weights, data shared by two evaluations)."""

    def __init__(self, torch: Any, numpy: Any) -> None:
        self.torch, self.np = torch, numpy
        self._tensors: dict[int, bytes] = {}   # id(tensor) -> digest; the spec keeps them alive
        self._files: dict[str, bytes] = {}     # path -> digest of its bytes
        self._modules: dict[str, bytes] = {}   # module name -> digest of its code (see _code)
        self._active: set[int] = set()         # containers on the path being encoded (cycles)

    def digest(self, value: Any) -> str:
        h = hashlib.sha256()
        self._feed(h, value, 0)
        return h.hexdigest()

    def _sub(self, value: Any, depth: int) -> bytes:
        h = hashlib.sha256()
        self._feed(h, value, depth)
        return h.digest()

    def _feed(self, h: Any, obj: Any, depth: int) -> None:
        torch, np = self.torch, self.np
        if obj is None:
            h.update(b"None;")
        elif isinstance(obj, enum.Enum):
            self._class(h, type(obj))
            h.update(f"enum:{obj.name};".encode())
        elif isinstance(obj, _PRIMITIVES):
            base: Any = next(t for t in type(obj).__mro__ if t in _PRIMITIVES)
            h.update(f"{type(obj).__qualname__}:{base.__repr__(obj)};".encode())
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            data = bytes(obj)
            h.update(b"bytes:%d:" % len(data) + data)
        elif isinstance(obj, torch.Tensor):
            h.update(b"tensor:" + self._tensor(obj))
        elif isinstance(obj, np.ndarray):
            self._array(h, obj, depth)
        elif isinstance(obj, np.generic):
            self._array(h, np.asarray(obj), depth)
        elif isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format, PurePath)):
            h.update(f"{type(obj).__qualname__}:{obj};".encode())
        elif isinstance(obj, types.CodeType):
            self._code_object(h, obj, depth)
        elif id(obj) in self._active:
            h.update(b"cycle;")  # a reference back to an object being encoded (a parent module)
        else:
            self._active.add(id(obj))
            try:
                self._feed_container(h, obj, depth)
            finally:
                self._active.discard(id(obj))

    def _feed_container(self, h: Any, obj: Any, depth: int) -> None:
        if isinstance(obj, self.torch.nn.Module):
            self._module(h, obj, depth)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self._class(h, type(obj))
            for f in dataclasses.fields(obj):
                h.update(f"field:{f.name}=".encode())
                self._feed(h, getattr(obj, f.name, None), depth)
        elif isinstance(obj, Mapping):
            # Sorted: a mapping built by iterating a set must not depend on the string hash seed.
            items = sorted((self._sub(k, depth), self._sub(v, depth)) for k, v in obj.items())
            h.update(b"map:%d:" % len(items) + b"".join(k + v for k, v in items))
        elif isinstance(obj, (list, tuple)):
            h.update(b"seq:%d:" % len(obj))
            for item in obj:
                self._feed(h, item, depth)
        elif isinstance(obj, (set, frozenset)):
            h.update(b"set:%d:" % len(obj) + b"".join(sorted(self._sub(x, depth) for x in obj)))
        elif isinstance(obj, type):
            self._class(h, obj)
        elif isinstance(obj, functools.partial):
            h.update(b"partial:")
            self._feed(h, [obj.func, obj.args, obj.keywords], depth)
        elif isinstance(obj, types.MethodType):
            h.update(b"method:")
            self._feed(h, [obj.__func__, obj.__self__], depth)
        elif isinstance(obj, types.FunctionType):
            self._function(h, obj, depth)
        elif isinstance(obj, (types.BuiltinFunctionType, types.ModuleType)):
            qualname = getattr(obj, '__qualname__', obj.__name__)
            h.update(f"builtin:{getattr(obj, '__module__', None)}.{qualname};".encode())
        else:
            self._object(h, obj, depth)

    def _tensor(self, t: Any) -> bytes:
        memo = self._tensors.get(id(t))
        if memo is not None:
            return memo
        torch = self.torch
        x = t.detach()
        if x.layout != torch.strided:
            x = x.to_dense()
        if x.is_quantized:
            x = x.dequantize()
        x = x.cpu().resolve_conj().resolve_neg().contiguous()
        th = hashlib.sha256(f"{x.dtype}:{tuple(x.shape)}:".encode())
        th.update(x.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, any dtype (bf16 too)
        self._tensors[id(t)] = th.digest()
        return self._tensors[id(t)]

    def _array(self, h: Any, a: Any, depth: int) -> None:
        h.update(f"ndarray:{a.dtype.str}:{a.shape}:".encode())
        if a.dtype.hasobject:  # object arrays hold pointers: encode the objects
            self._feed(h, a.tolist(), depth)
        else:
            h.update(self.np.ascontiguousarray(a).tobytes())

    def _module(self, h: Any, m: Any, depth: int) -> None:
        self._class(h, type(m))
        for kind in ("_parameters", "_buffers", "_modules"):
            for name, value in getattr(m, kind).items():
                h.update(f"{kind}:{name}=".encode())
                self._feed(h, value, depth)
        for kind in _FORWARD_HOOKS:
            # The keys are process-wide handle counters; the hooks' order is what counts.
            h.update(f"{kind}:".encode())
            self._feed(h, list(getattr(m, kind, {}).values()), depth)
        for name, value in vars(m).items():
            if name not in _MODULE_BOOKKEEPING:
                h.update(f"attr:{name}=".encode())
                self._feed(h, value, depth)

    def _object(self, h: Any, obj: Any, depth: int) -> None:
        self._class(h, type(obj))
        if depth >= OBJECT_DEPTH:
            h.update(b"deep;")
            return
        state: dict[str, Any] = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in [slots] if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state.setdefault(slot, getattr(obj, slot))
        for name in sorted(state):
            h.update(f"attr:{name}=".encode())
            self._feed(h, state[name], depth + 1)

    def _class(self, h: Any, cls: type) -> None:
        """A class by its name and the code of every class in its MRO (not by its module's
        name: a factory file is imported under a name derived from its path)."""
        h.update(f"class:{cls.__qualname__}:".encode())
        for base in cls.__mro__:
            h.update(self._code(base.__module__))

    def _function(self, h: Any, fn: types.FunctionType, depth: int) -> None:
        h.update(f"function:{fn.__qualname__}:".encode() + self._code(fn.__module__))
        self._code_object(h, fn.__code__, depth)
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        self._feed(h, [fn.__defaults__, fn.__kwdefaults__, cells], depth)

    def _code_object(self, h: Any, code: types.CodeType, depth: int) -> None:
        h.update(b"code:%d:" % len(code.co_code) + code.co_code)
        self._feed(h, [code.co_names, code.co_consts], depth)

    def _code(self, module_name: str) -> bytes:
        """The digest of a module's .py file and of the .py files its names come from (the
        modules it imports, the modules of the functions and classes it imports by name)."""
        memo = self._modules.get(module_name)
        if memo is not None:
            return memo
        module = sys.modules.get(module_name)
        files = {_source_file(module)}
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, types.ModuleType):
                files.add(_source_file(value))
            elif isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) != module_name:
                files.add(_source_file(sys.modules.get(getattr(value, "__module__", "") or "")))
        h = hashlib.sha256(b"module-code:")
        for path in sorted(p for p in files if p):
            h.update(self._file(path))
        self._modules[module_name] = h.digest()
        return self._modules[module_name]

    def _file(self, path: str) -> bytes:
        if path not in self._files:
            try:
                with open(path, "rb") as f:
                    self._files[path] = hashlib.sha256(f.read()).digest()
            except OSError:
                self._files[path] = hashlib.sha256(f"unreadable:{path}".encode()).digest()
        return self._files[path]


def _source_file(module: types.ModuleType | None) -> str | None:
    """A module's .py file; None for built-in and compiled modules (named, not hashed)."""
    path = getattr(module, "__file__", None) if module is not None else None
    return path if isinstance(path, str) and path.endswith(".py") else None
