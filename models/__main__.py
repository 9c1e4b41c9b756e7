"""`python -m models build|list`: the pipeline from the shell (docs/pipeline.md).

Progress goes to stderr while a build works, then a summary table (or, with --json, one JSON
object on stdout). Any failure prints one line naming the model and the step and exits with the
step's code (models/errors.py); set SERVEDMODEL_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from models.errors import EXIT_INTERNAL, EXIT_USAGE, BuildError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        sys.stderr.write(f"error: {message} (see python -m models {self.prog.split()[-1]} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m models", description="ServedModel model preparation")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="export, verify, compress and package a model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="exit codes: 0 ok, 1 unexpected, 2 usage/unknown model/missing file or factory, "
                              "3 factory raised or invalid spec,\n4 export, 5 parity, 6 unsupported compression, "
                              "7 compression failed, 8 package (see docs/pipeline.md)")
    b.add_argument("--model", required=True, help="zoo name (python -m models list) or path/to/file.py:factory")
    # Compression and device are checked by build() itself, so the CLI and the Python API
    # fail with the same message and code (6 for an unsupported compression).
    b.add_argument("--compression", default="none", help="none | fp16 | int8 (default none)")
    b.add_argument("--out", required=True, type=Path, help="directory for the build context (replaced atomically)")
    b.add_argument("--device", default="cpu", help="cpu | cuda: which runtime the image packages (default cpu)")
    b.add_argument("--cache-dir", type=Path, default=None, help="default $SERVEDMODEL_CACHE or ~/.cache/servedmodel")
    b.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    sub.add_parser("list", help="list the model zoo")
    return p


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _table(result) -> str:
    m, rows = result.manifest, []
    rows.append(("model", f"{result.model} ({m['name']})"))
    rows.append(("version", result.version))
    rows.append(("context", str(result.context_dir)))
    rows.append(("compression", f"{result.compression} ({m['compression']['details'].get('quantizer', m['compression']['details'].get('converter', 'fp32'))})"
                 if result.compression != "none" else "none"))
    rows.append(("size", f"{_mib(result.sizes.get('fp32_bytes'))} fp32 -> {_mib(result.sizes.get('final_bytes'))}"
                 f" ({100 * result.sizes['final_bytes'] / max(result.sizes['fp32_bytes'], 1):.0f}%)"))
    for name, o in m["parity"]["outputs"].items():
        extra = []
        if o.get("top1_agreement") is not None:
            extra.append(f"top-1 {o['top1_agreement']:.3f}")
        if o.get("cosine_min") is not None:
            extra.append(f"cosine min {o['cosine_min']:.4f}")
        rows.append((f"parity {name}", f"max abs {o['max_abs_err']:.3g}, max rel {o['max_rel_err']:.3g}"
                     + (", " + ", ".join(extra) if extra else "") + f" (batches {m['parity']['batch_sizes']}: passed)"))
    sig = lambda ts: ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in ts)  # noqa: E731
    rows.append(("inputs", sig(m["inputs"])))
    rows.append(("outputs", sig(m["outputs"])))
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in result.steps.items())
    rows.append(("steps", steps + (" (cached build)" if result.cache_hit else "")))
    rows.append(("this run", f"{result.seconds:.2f} s, " + ("cache hit, no export" if result.cache_hit else "built")))
    rows.extend(("cache repaired", note) for note in result.cache_repaired)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _list() -> int:
    from models.zoo import ZOO

    width = max(map(len, ZOO))
    for name, (_, description) in ZOO.items():
        print(f"{name:<{width}}  {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    from models.pipeline import build

    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = build(args.model, compression=args.compression, out_dir=args.out, device=args.device,
                       cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=progress)
    except BuildError as e:
        error = {"ok": False, "model": e.model, "step": e.step, "exit_code": e.exit_code, "error": str(e)}
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"error: model {args.model!r}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: still one line, unless debugging
        if os.environ.get("SERVEDMODEL_DEBUG"):
            traceback.print_exc()
        msg = f"model {args.model!r}: internal failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        error = {"ok": False, "model": args.model, "step": "internal", "exit_code": EXIT_INTERNAL, "error": msg}
        code = EXIT_INTERNAL
    else:
        if args.json:
            print(json.dumps(result.summary()))
        else:
            print(_table(result))
        return 0
    print(f"error: {error['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(error))
    return code


if __name__ == "__main__":
    sys.exit(main())
