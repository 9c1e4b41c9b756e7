"""`python -m models build|list`: the pipeline from the shell (docs/pipeline.md).

Progress goes to stderr while a build works, then a summary table (or, with --json, one JSON
object on stdout). Any failure prints one line naming the model and the step and exits with the
step's code (models/errors.py); set SERVEDMODEL_DEBUG=1 for the traceback. Ctrl-C stops the
build, removes what it had staged and exits 130.

`build` runs in a worker process that this one supervises. A factory is arbitrary code: it may
print, or end the interpreter with os._exit(0). The worker's stdout is this process's stderr,
and this process prints the result and reports success only when the worker sent its final
report, so neither can corrupt --json or fake a build.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn

if __package__ == "models":
    # `python -m models` in a checkout: run the CLI as `servedmodel.models`, the name user
    # factories import ModelSpec from, so one copy of its classes exists in the process.
    _root = str(Path(__file__).resolve().parent.parent)
    os.execve(sys.executable, [sys.executable, "-m", "servedmodel.models", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_root, os.environ.get("PYTHONPATH", "")) if p)})

from .constants import COMPRESSIONS
from .errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, BuildError
from .pipeline import build
from .seal import Encryption
from .zoo import ZOO

# Set by the supervisor for its worker only: the file descriptor the worker reports on.
WORKER_ENV = "SERVEDMODEL_BUILD_REPORT_FD"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m models", description="ServedModel model preparation")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="export, verify, compress and package a model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 ok, 1 unexpected, 2 usage/unknown model/missing file or factory, "
                              "3 factory raised or invalid spec,\n4 export, 5 parity, 6 unsupported compression, "
                              "7 compression failed, 8 package,\n9 the task-quality gate refused the variant, "
                              "130 interrupted (see docs/pipeline.md)")
    b.add_argument("--model", required=True, help="zoo name (python -m models list) or path/to/file.py:factory")
    # Compression and device are checked by build() itself, so the CLI and the Python API
    # fail with the same message and code (6 for an unsupported compression).
    b.add_argument("--compression", default="none", help=f"{' | '.join(COMPRESSIONS)} (default none)")
    b.add_argument("--max-metric-drop", type=float, default=None, metavar="X",
                   help="allowed drop of the task metric from the fp32 export for this build, overriding "
                        "the spec's allowance (default: the spec's, else models.evaluate.DEFAULT_MAX_DROP)")
    b.add_argument("--out", required=True, type=Path, help="directory for the build context (replaced atomically)")
    b.add_argument("--device", default="cpu", help="cpu | cuda: which runtime the image packages (default cpu)")
    b.add_argument("--cache-dir", type=Path, default=None, help="default $SERVEDMODEL_CACHE or ~/.cache/servedmodel")
    b.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    b.add_argument("--encrypt", choices=("local", "kms"), default=None,
                   help="encrypt the model in the context (AES-256-GCM; docs/pipeline.md): the data key wrapped "
                        "by --key-file (local) or by AWS KMS --kms-key (kms). Default: not encrypted")
    b.add_argument("--key-file", type=Path, default=None,
                   help="--encrypt local: the 32-byte key (raw or base64); created, mode 0600, when missing")
    b.add_argument("--kms-key", default=None, metavar="ARN", help="--encrypt kms: the KMS key (or alias) ARN")
    b.add_argument("--served-name", default=None,
                   help="the name the server will answer under, bound into the encryption context "
                        "(default: the model's name)")
    sub.add_parser("list", help="list the model zoo")
    return p


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _table(result) -> str:
    m, rows = result.manifest, []
    rows.append(("model", f"{result.model} ({m['name']})"))
    rows.append(("version", result.version))
    rows.append(("context", str(result.context_dir)))
    details = m["compression"]["details"]
    tool = details.get("quantizer", details.get("converter", "fp32"))
    if "prune" in details:
        tool = details["prune"]["pruner"] + (f" + {details['int8']['quantizer']}" if "int8" in details else "")
    rows.append(("compression", f"{result.compression} ({tool})" if result.compression != "none" else "none"))
    rows.append(("size", f"{_mib(result.sizes.get('fp32_bytes'))} fp32 -> {_mib(result.sizes.get('final_bytes'))}"
                 f" ({100 * result.sizes['final_bytes'] / max(result.sizes['fp32_bytes'], 1):.0f}%)"))
    for name, o in m["parity"]["outputs"].items():
        extra = []
        if o.get("top1_agreement") is not None:
            extra.append(f"top-1 {o['top1_agreement']:.3f}")
        if o.get("cosine_min") is not None:
            extra.append(f"cosine min {o['cosine_min']:.4f}")
        rows.append((f"parity {name}", f"max abs {o['max_abs_err']:.3g}, max rel {o['max_rel_err']:.3g}"
                     + (", " + ", ".join(extra) if extra else "") + f" (batches {m['parity']['batch_sizes']}: "
                     + ("passed)" if m["parity"]["passed"] else "outside the tolerance; reported, not required)")))
    ev = m.get("evaluation")
    for e in ([ev, *ev.get("others", [])] if ev else []):
        rows.append((f"task {e['metric']}", f"{e['value']:.6g} on {e['dataset']} (n={e['n']}), fp32 export "
                     f"{e['reference']:.6g}, drop {e['drop']:.4g} <= allowed {e['max_drop']:g}"))
    if not ev:
        rows.append(("task metric", "none measured (the spec has no evaluation)"))
    sig = lambda ts: ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in ts)  # noqa: E731
    rows.append(("inputs", sig(m["inputs"])))
    rows.append(("outputs", sig(m["outputs"])))
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in result.steps.items())
    rows.append(("steps", steps + (" (cached build)" if result.cache_hit else "")))
    if result.startup:
        rows.append(("start-up", f"model load {result.startup['load_seconds']:.3f} s + warm-up "
                     f"{result.startup['warmup_seconds']:.3f} s (onnxruntime CPU, measured at build time)"))
    if result.encryption:
        key = result.encryption["key"]
        rows.append(("encryption", f"{result.encryption['algorithm']}, data key wrapped by {key['provider']} key "
                     f"{key['key_id']} (context {key['encryption_context']}); decryption "
                     f"{result.startup.get('decrypt_seconds', 0) * 1000:.0f} ms at start"))
    rows.append(("this run", f"{result.seconds:.2f} s, " + ("cache hit, no export" if result.cache_hit else "built")))
    rows.extend(("cache repaired", note) for note in result.cache_repaired)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _list() -> int:
    width = max(map(len, ZOO))
    for name, (_, description) in ZOO.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _build(args, progress) -> tuple[int, str]:
    """Run the build; print a failure's one line on stderr. Returns (exit code, stdout text)."""
    try:
        encryption = None
        if args.encrypt or args.key_file or args.kms_key:
            try:
                encryption = Encryption(args.encrypt or "", key_file=args.key_file, kms_key=args.kms_key,
                                        served_name=args.served_name)
            except ValueError as e:
                raise BuildError(args.model, "usage", str(e), EXIT_USAGE) from None
        result = build(args.model, compression=args.compression, out_dir=args.out, device=args.device,
                       cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=progress,
                       max_metric_drop=args.max_metric_drop, encryption=encryption)
    except BuildError as e:
        error = {"ok": False, "model": e.model, "step": e.step, "exit_code": e.exit_code, "error": str(e)}
    except KeyboardInterrupt:
        error = _interrupted(args.model)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, unless debugging
        if os.environ.get("SERVEDMODEL_DEBUG"):
            traceback.print_exc()
        msg = f"model {args.model!r}: internal failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        error = {"ok": False, "model": args.model, "step": "internal", "exit_code": EXIT_INTERNAL, "error": msg}
    else:
        return 0, json.dumps(result.summary()) if args.json else _table(result)
    print(f"error: {error['error']}", file=sys.stderr, flush=True)
    return error["exit_code"], json.dumps(error) if args.json else ""


def _interrupted(model: str) -> dict:
    return {"ok": False, "model": model, "step": "interrupted", "exit_code": EXIT_INTERRUPTED,
            "error": f"model {model!r}: interrupted"}


def _work(args, fd: int) -> NoReturn:
    """The worker: build, reporting each step and then the result on `fd` (JSON lines)."""
    stopped: list[int] = []

    def stop_once(signum, frame) -> None:
        # The first SIGINT stops the build (KeyboardInterrupt, which every step turns into
        # cleanup); later ones are ignored so that the cleanup completes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop_once)
    report = os.fdopen(fd, "w", buffering=1)
    prefix = f"[{args.model}] "

    def send(message: dict) -> None:
        try:
            report.write(json.dumps(message) + "\n")
        except OSError:  # the supervisor is gone: nobody to tell
            pass

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        if msg.startswith(prefix):
            send({"step": msg[len(prefix):].partition(":")[0]})

    code, out = _build(args, progress)
    if stopped and code != EXIT_INTERRUPTED:
        # Interrupted, but the KeyboardInterrupt was swallowed on the way (library code) or
        # came as the build finished: still an interruption, and what was published is whole.
        error = _interrupted(args.model)
        print(f"error: {error['error']}", file=sys.stderr, flush=True)
        code, out = EXIT_INTERRUPTED, json.dumps(error) if args.json else ""
    send({"done": True, "exit_code": code, "stdout": out})
    report.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is published and reported: end here rather than through the interpreter's
    # shutdown, which with torch loaded costs more than a cached build's whole work.
    os._exit(code)


def _supervise(args, argv: list[str]) -> int:
    """Run the build in a worker process; forward Ctrl-C to it and wait for its cleanup. Success
    needs the worker's final report: a worker that ends without one (os._exit in a factory, a
    crash) is a failure naming the step it was in (during load: the factory, exit 3)."""
    import subprocess

    read_fd, write_fd = os.pipe()
    env = {**os.environ, WORKER_ENV: str(write_fd)}
    # The folder that holds the `servedmodel` package (a checkout's root, or site-packages).
    package_file = sys.modules["servedmodel"].__file__
    assert package_file is not None and __package__  # a regular package, run with -m
    home = str(Path(package_file).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH", "")) if p)
    state: dict = {"worker": None, "interrupted": False}

    def forward(signum, frame) -> None:
        state["interrupted"] = True
        if state["worker"] is not None:
            try:
                os.kill(state["worker"].pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGINT, forward)
    last_step, final = None, None
    try:
        try:
            # The worker's stdout is our stderr (fd 2): stdout carries only the result printed below.
            state["worker"] = subprocess.Popen([sys.executable, "-m", __package__, *argv], env=env,
                                               pass_fds=(write_fd,), stdout=2)
        finally:
            os.close(write_fd)
        if state["interrupted"]:  # Ctrl-C before the worker existed
            forward(signal.SIGINT, None)
        with os.fdopen(read_fd) as reports:
            for line in reports:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("step"), str):
                    last_step = message["step"]
                elif isinstance(message, dict) and message.get("done"):
                    final = message
        rc = state["worker"].wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if final is not None:
        if final.get("stdout"):
            print(final["stdout"], flush=True)
        return int(final["exit_code"])
    if state["interrupted"] or rc in (EXIT_INTERRUPTED, -signal.SIGINT):
        error = _interrupted(args.model)
    else:
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        step = "factory" if last_step == "load" else "internal"
        during = f" during the {last_step} step" if last_step else ""
        error = {"ok": False, "model": args.model, "step": step, "exit_code": EXIT_CODES[step],
                 "error": f"model {args.model!r}: {step} failed: the build process {how}{during} without "
                          "finishing (did the factory or the model call os._exit() or crash the interpreter?)"}
    print(f"error: {error['error']}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(error), flush=True)
    return error["exit_code"]


# What a build imports; a Python without them cannot build, whatever the model.
BUILD_TOOLS = ("torch", "onnx", "onnxruntime")


def missing_build_tools() -> list[str]:
    import importlib.util

    return [name for name in BUILD_TOOLS if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    missing = missing_build_tools()
    if missing:
        sys.stderr.write(
            f"error: {sys.executable} has no {', '.join(missing)}: the build needs torch, onnx and onnxruntime. "
            "In a checkout, use the project's virtual environment (`make serve` or `make test` creates .venv: "
            "`.venv/bin/python -m models build ...`, or `. .venv/bin/activate` first); elsewhere "
            "`pip install servedmodel` into the Python that runs the build.\n")
        return EXIT_USAGE
    fd = os.environ.get(WORKER_ENV)
    return _work(args, int(fd)) if fd else _supervise(args, argv)


if __name__ == "__main__":
    sys.exit(main())
