"""`build()`: load -> export -> verify -> compress -> verify again -> package, cached.

The contract is docs/architecture.md, section 1. Each step is a function of its own module;
this one orders them, times them, reports progress and keeps the cache.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from . import cache as cache_mod
from . import evaluate as evaluate_mod
from . import export as exporter  # as a module: tests replace exporter.export to prove it did not run
from .constants import COMPRESSIONS, PRUNED
from .errors import EXIT_INTERNAL, EXIT_USAGE, BuildError
from .fingerprint import spec_fingerprint
from .loader import load_spec, parse_ref
from .package import DEVICES, check_out_dir, check_writable, copy_context, make_manifest, runtime_files, write_context
from .prune import PRUNE, prune
from .seal import Encryption
from .startup import measure, model_layer_bytes

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    """What build() returns. `steps` are the seconds each step took in the build that made
    the context (on a cache hit: that earlier build's figures; `cache_hit` tells)."""

    context_dir: Path
    version: str
    manifest: dict
    cache_hit: bool
    model: str = ""
    compression: str = "none"
    device: str = "cpu"
    steps: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    startup: dict[str, Any] = field(default_factory=dict)
    """Measured model load + warm-up seconds and the memory peak of both, `peak_memory_bytes`
    (models/startup.py): beside the manifest, never in it."""
    exported: bool = False  # True only when this call ran the exporter
    seconds: float = 0.0  # wall time of this call
    cache_repaired: list[str] = field(default_factory=list)  # damaged cache entries this call rebuilt, and why
    encryption: dict[str, Any] | None = None
    """The manifest's `encryption` block (algorithm, key provider and id, ...) when --encrypt was given."""

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what `--json` prints)."""
        return {"ok": True, "model": self.model, "name": self.manifest.get("name"), "version": self.version,
                "context_dir": str(self.context_dir), "compression": self.compression, "device": self.device,
                "cache_hit": self.cache_hit, "exported": self.exported, "cache_repaired": self.cache_repaired,
                "seconds": round(self.seconds, 3),
                "sizes": self.sizes, "steps": self.steps, "startup": self.startup,
                "parity": self.manifest.get("parity"),
                "evaluation": self.manifest.get("evaluation"), "encryption": _encryption_summary(self.encryption),
                "inputs": self.manifest.get("inputs"), "outputs": self.manifest.get("outputs")}


@contextlib.contextmanager
def _quiet():
    """Keep the tools' chatter (exporter logs, deprecation warnings, the quantizer's advice
    to pre-process, which we do) out of the progress output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def _naming(model: str) -> Iterator[None]:
    """A BuildError raised inside names the model reference the user gave (a step may name the
    spec's own name)."""
    try:
        yield
    except BuildError as e:
        if e.model != model:
            raise BuildError(model, e.step, e.detail, e.exit_code) from None
        raise


def _producer(opset: int) -> dict[str, Any]:
    def v(name: str) -> str:
        return metadata.version(name).split("+")[0]
    return {"torch": v("torch"), "onnx": v("onnx"), "onnxruntime": v("onnxruntime"),
            "onnxscript": v("onnxscript"), "opset": opset, "exporter": "torch.onnx.export(dynamo=True)"}


def _encryption_summary(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """What --json shows of the encryption block: no wrapped key, nonce or hash."""
    if not block:
        return None
    key = block["key"]
    return {"algorithm": block["algorithm"], "file": block["file"], "provider": key["provider"],
            "key_id": key["key_id"], "encryption_context": key["encryption_context"]}


def build(model: str, compression: str = "none", out_dir: Path | str = Path("build/local"),
          device: str = "cpu", cache_dir: Path | str | None = None, *, use_cache: bool = True,
          progress: Progress | None = None, max_metric_drop: float | None = None,
          encryption: Encryption | None = None) -> BuildResult:
    """Build the context for `model` at `out_dir`. Raises models.BuildError.

    max_metric_drop: the allowed drop of the task metric for this build (every evaluation of the
    spec), overriding the spec's and the defaults (CLI --max-metric-drop); None keeps them.
    encryption: encrypt the model in the context written to `out_dir` (models/seal.py); the
    cached context, the version and the tag stay those of the plaintext."""
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    if compression not in COMPRESSIONS:
        raise BuildError(str(model), "compression", f"unsupported compression {compression!r}; "
                         f"choose one of {', '.join(COMPRESSIONS)}")
    if device not in DEVICES:
        raise BuildError(str(model), "usage", f"unsupported device {device!r}; choose one of {', '.join(DEVICES)}",
                         EXIT_USAGE)
    max_metric_drop = evaluate_mod.check_max_drop(model, max_metric_drop)
    out = Path(out_dir).expanduser().absolute()
    mref = parse_ref(model)
    check_out_dir(model, out)
    check_writable(model, out)
    try:
        runtime_files(device)
    except FileNotFoundError as e:
        raise BuildError(model, "package", str(e)) from None

    if encryption is not None and encryption.mode == "local":
        from .seal import local_key
        assert encryption.key_file is not None   # (local mode: checked by Encryption)
        local_key(model, encryption.key_file)    # made (or refused) now, not after the export

    root = cache_mod.cache_root(cache_dir)
    repaired: list[str] = []
    steps: dict[str, float] = {}
    ran_export = False

    def checked(lookup: Callable, what: str, entry_key: str):
        """A cache lookup whose damaged entry counts as a miss, said in progress and the result."""
        try:
            return lookup(root, entry_key)
        except cache_mod.DamagedEntry as e:
            repaired.append(f"{what} {entry_key[:12]}: {e}")
            say(f"[{model}] cache: the {what} entry {entry_key[:12]} is damaged ({e}); building it again")
            return None

    @contextlib.contextmanager
    def step(name: str, what: str):
        say(f"[{model}] {name}: {what} ...")
        t = time.perf_counter()
        try:
            with _quiet():
                yield
        except BuildError:
            raise
        except Exception as e:  # a bug, or a tool failing in a way we do not know yet
            raise BuildError(model, name, f"unexpected {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                             EXIT_INTERNAL) from e
        steps[name] = round(time.perf_counter() - t, 3)
        say(f"[{model}] {name}: done in {steps[name]:.2f} s")

    # The factory runs on every build, cached or not: what it returns (weights it loads from a
    # file, data it reads) is part of the cache key, so a retrained model is never served from
    # the cache under its old version (docs/pipeline.md, "What the version covers").
    with _naming(model), step("load", "importing the factory and building the ModelSpec"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        with cache_mod.building_with(root if use_cache else None):
            spec = load_spec(mref)
        fingerprint = spec_fingerprint(spec) if use_cache else None
    if compression in PRUNED and not spec.evaluations:
        # Parity cannot judge a pruned model (its outputs change by design): without a task
        # metric nothing would stand between a broken model and the image.
        raise BuildError(model, "compression", f"{compression} needs a task metric to judge the pruned model: "
                         "give the ModelSpec an evaluation (models.Evaluation; see docs/pipeline.md)")

    key = export_key = None
    if fingerprint is not None:
        key = cache_mod.cache_key(mref, compression, device, spec_digest=fingerprint.digest,
                                  max_metric_drop=max_metric_drop)
        export_key = cache_mod.cache_key(mref, "export", "any", spec_digest=fingerprint.digest, export_only=True)
        hit = checked(cache_mod.lookup, "context", key)
        if hit is not None:
            ctx, record = hit
            if encryption is None:
                copy_context(model, ctx, out)
            manifest = record["manifest"]
            startup, sizes = record.get("startup"), dict(record["sizes"])
            if (not startup or "peak_memory_bytes" not in startup or "decrypt_seconds" not in startup
                    or "model_layer_gzip_bytes" not in sizes):
                # an entry cached before these were measured: measure them now (on the cached
                # context: --out may hold the encrypted one)
                with _quiet():
                    if not startup or "peak_memory_bytes" not in startup:
                        startup = measure(ctx / "model" / manifest["model_file"], manifest)
                    if "decrypt_seconds" not in startup:
                        startup = {**startup, "decrypt_seconds": _decrypt_seconds(ctx, manifest)}
                sizes["model_layer_gzip_bytes"] = model_layer_bytes(ctx)
                cache_mod.update_record(root, key, {"startup": startup, "sizes": sizes})
            cache_mod.remember_spec(root, mref, fingerprint.parts)
            block = None
            if encryption is not None:
                with _naming(model):
                    manifest, startup, sizes = _sealed(model, ctx, out, encryption, root, startup, sizes, say)
                block = manifest["encryption"]
            say(f"[{model}] cache hit ({key[:12]}): no export; context copied to {out}")
            return BuildResult(context_dir=out, version=manifest["version"], manifest=manifest, cache_hit=True,
                               model=model, compression=compression, device=device, steps=record["steps"],
                               sizes=sizes, startup=startup, exported=False, seconds=time.perf_counter() - t_start,
                               encryption=block)
        changed = fingerprint.changed_parts(cache_mod.last_spec(root, mref) or fingerprint.parts)
        if changed:
            say(f"[{model}] cache: the factory returned another spec than in the last build of {model} "
                f"(changed: {', '.join(changed)}); building")

    # Imported here, not at the top: both load numpy (and compress onnx's tools), which a cache
    # hit does not need.
    from .compress import compress
    from .verify import check_rows_independent, reference, verify

    with _naming(model):
        with tempfile.TemporaryDirectory(prefix="servedmodel-build-") as tmp:
            fp32 = Path(tmp) / "model.fp32.onnx"
            cached_export = checked(cache_mod.lookup_export, "fp32 export", export_key) if export_key else None
            if cached_export is not None and export_key:
                shutil.copyfile(cached_export[0], fp32)
                exported = exporter.ExportResult(path=fp32, opset=cached_export[1]["opset"], inputs=(), outputs=(),
                                        size_bytes=cached_export[1]["size_bytes"])
                say(f"[{model}] export: reusing the cached fp32 export ({export_key[:12]})")
            else:
                with step("export", "torch.onnx.export(dynamo=True), onnx.checker, shape inference"):
                    exported = exporter.export(spec, fp32)
                ran_export = True
                if export_key:
                    cache_mod.store_export(root, export_key, fp32, {"opset": exported.opset,
                                                                    "size_bytes": exported.size_bytes})
            with step("verify", "onnxruntime fp32 vs eager torch"):
                ref = reference(spec)
                parity = verify(spec, fp32, ref, "none")
                check_rows_independent(spec, ref)
            measured: tuple = ()
            if spec.evaluations:
                names = ", ".join(f"{e.metric_name} on {e.dataset}" for e in spec.evaluations)
                with step("evaluate", f"task metric of the fp32 export ({names})"):
                    measured = evaluate_mod.reference(spec, fp32)
            final, details = fp32, {}
            if compression in PRUNED:
                final, details = _pruned(spec, compression, Path(tmp), step, ref)
                parity = details.pop("parity")
            elif compression != "none":
                packed = Path(tmp) / f"model.{compression}.onnx"
                with step("compress", compression if compression == "fp16"
                          else f"int8 ({spec.resolved_int8_method()} quantization)"):
                    compressed = compress(spec, compression, fp32, packed)
                    final, details = compressed.path, compressed.details
                with step("verify-compressed", f"onnxruntime {compression} vs eager torch fp32"):
                    parity = verify(spec, final, ref, compression)
            evaluation = None
            if measured and compression == "none":
                evaluation = evaluate_mod.gate(spec, compression, final, measured, max_metric_drop)
            elif measured:
                with step("evaluate-compressed", f"task metric of the {compression} variant against the allowance"):
                    evaluation = evaluate_mod.gate(spec, compression, final, measured, max_metric_drop)
            else:
                say(f"[{model}] evaluate: no task metric measured (the spec has no evaluation)")
            model_bytes = final.read_bytes()
            with step("package", f"writing the build context to {out}"):
                import onnx  # heavy: only a build that packages loads it

                graph = onnx.load_model_from_string(model_bytes).graph
                manifest = make_manifest(
                    spec=spec, device=device, model_bytes=model_bytes, inputs=exporter.tensor_infos(graph.input),
                    outputs=exporter.tensor_infos(graph.output), compression=compression,
                    compression_details=details, parity=parity, producer=_producer(exported.opset),
                    evaluation=evaluation)
                # An encrypted build writes the plaintext context to the build's private folder
                # (the cache is filled from it) and only the sealed one to --out.
                plain = Path(tmp) / "context" if encryption is not None else out
                manifest = write_context(model, plain, device, model_bytes, manifest)
            with step("startup", "timing model load + warm-up with onnxruntime"):
                startup = measure(plain / "model" / manifest["model_file"], manifest)
                startup["decrypt_seconds"] = _decrypt_seconds(plain, manifest)
                layer_bytes = model_layer_bytes(plain)
            sizes = {"fp32_bytes": exported.size_bytes, "final_bytes": len(model_bytes),
                     "model_layer_gzip_bytes": layer_bytes}
            record = {"manifest": manifest, "steps": steps, "sizes": sizes, "startup": startup}
            if key is not None and fingerprint is not None:
                cache_mod.store(root, key, plain, {**record, "spec_parts": fingerprint.parts})
                cache_mod.remember_spec(root, mref, fingerprint.parts)
            block = None
            if encryption is not None:
                manifest, startup, sizes = _sealed(model, plain, out, encryption,
                                                   root if key is not None else None, startup, sizes, say)
                block = manifest["encryption"]
    return BuildResult(context_dir=out, version=manifest["version"], manifest=manifest, cache_hit=False,
                       model=model, compression=compression, device=device, steps=steps, sizes=sizes,
                       startup=startup, exported=ran_export, seconds=time.perf_counter() - t_start,
                       cache_repaired=repaired, encryption=block)


def _decrypt_seconds(context: Path, manifest: dict[str, Any]) -> float:
    """What opening this model encrypted costs the server (models/seal.py decrypt_seconds), measured
    once with the other start-up figures and kept in the cache's record: the cold-start budget
    and the timeouts derived from it (components/coldstart.py) stay the same on every rebuild,
    whether the model is sealed now or later (a kms key known only once the stack created it)."""
    from .seal import decrypt_seconds

    return decrypt_seconds((context / "model" / manifest["model_file"]).read_bytes())


def _sealed(model: str, plain: Path, out: Path, encryption: Encryption, root: Path | None, startup: dict,
            sizes: dict, say: Progress) -> tuple[dict, dict, dict]:
    """Publish the encrypted context of `plain` at `out`: (its manifest, the start-up figures
    with `decrypt_seconds` added, the sizes with the sealed model layer's)."""
    from .seal import publish_sealed

    t = time.perf_counter()
    done = publish_sealed(model, plain, out, encryption, root)
    key = done["manifest"]["encryption"]["key"]
    say(f"[{model}] encrypt: {key['provider']} key {key['key_id']}"
        f"{' (sealed context reused from the cache)' if done['sealed_cache_hit'] else ''}: done in "
        f"{time.perf_counter() - t:.2f} s")
    # The figure recorded with the plaintext build's (measured once); a fresh measurement otherwise.
    startup = {**startup, "decrypt_seconds": startup.get("decrypt_seconds", done["decrypt_seconds"])}
    sizes = {**sizes, "model_layer_gzip_bytes": done["model_layer_gzip_bytes"]}
    return done["manifest"], startup, sizes


def _pruned(spec, compression: str, tmp: Path, step, ref) -> tuple[Path, dict[str, Any]]:
    """prune / prune-int8: prune (and fine-tune) the torch module, export it, check the graph,
    quantize it for prune-int8, and measure parity against the unpruned fp32 torch model
    (reported, not required: pruning changes outputs by design; the task metric judges it)."""
    import dataclasses

    from .compress import compress  # numpy and onnx's tools, as in build()
    from .verify import verify  # numpy, as in build()

    options = spec.prune or PRUNE
    with step("prune", f"torch-pruning, {options.ratio:.0%} of the channels of each coupled group"
              + (f", then {spec.finetune.epochs} epoch(s) of fine-tuning" if spec.finetune else "")):
        module, prune_details = prune(spec)
        pruned_spec = dataclasses.replace(spec, module=module)
    path = tmp / "model.pruned.onnx"
    with step("export-pruned", "torch.onnx.export of the pruned module, onnx.checker, shape inference"):
        exporter.export(pruned_spec, path)
    details: dict[str, Any] = {"prune": prune_details}
    if compression == "prune-int8":
        with step("compress", f"int8 ({pruned_spec.resolved_int8_method()} quantization) of the pruned model"):
            compressed = compress(pruned_spec, "int8", path, tmp / "model.prune-int8.onnx")
        path, details["int8"] = compressed.path, compressed.details
    with step("verify-compressed", f"onnxruntime {compression} vs eager torch fp32 (reported, not required)"):
        details["parity"] = verify(spec, path, ref, compression, required=False)
    return path, details
