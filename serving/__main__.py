"""`python -m serving [--context DIR] [--host H] [--port P]` serves a build context;
`python -m serving openapi --context DIR [--out FILE]` writes its OpenAPI document."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import StartupError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "serve"
    if argv and argv[0] in ("serve", "openapi"):
        command = argv.pop(0)
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--context", help="build context directory (SERVEDMODEL_CONTEXT)")
    if command == "openapi":
        parser.add_argument("--out", help="write here instead of stdout")
    else:
        parser.add_argument("--host", help="listen address (SERVEDMODEL_HOST)")
        parser.add_argument("--port", type=int, help="listen port (SERVEDMODEL_PORT)")
        parser.add_argument("--grpc-port", type=int,
                            help="gRPC port (SERVEDMODEL_GRPC_PORT; unset or 0: no gRPC)")
    args = parser.parse_args(argv)

    from .manifest import load_manifest
    from .settings import context_from, load_settings

    try:
        context = context_from(vars(args), os.environ)
        manifest = load_manifest(context)
        settings = load_settings(manifest, vars(args), os.environ)
        if command == "openapi":
            from .openapi import build_openapi

            # The same resolution as `serve`: the served name and the batching it enforces.
            doc = build_openapi(manifest, settings.batching, settings.model_name)
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
            if args.out:
                with open(args.out, "w") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
            return 0
        from .model import OnnxModel

        model = OnnxModel(manifest, settings)
        model.load()
        from .app import create_app

        app = create_app(settings, model, manifest)     # opens the audit log
    except StartupError as e:
        print(f"serving: {e}", file=sys.stderr, flush=True)
        return 2 if str(e).startswith("invalid settings") else 1

    from .server import serve

    print(json.dumps({"event": "starting", "model": manifest.name, "version": manifest.version,
                      "providers": model.providers, "gpu_mem_limit": settings.gpu_mem_limit,
                      "intra_op_threads": settings.intra_op_threads,
                      "served_name": app.service.model_name,
                      "max_batch_size": settings.batching.max_batch_size, "host": settings.host,
                      "port": settings.port, "grpc_port": settings.grpc_port,
                      "max_connections": settings.max_connections,
                      "encrypted": "encryption" in manifest.raw,
                      "decrypt_ms": round(model.decrypt_seconds * 1000, 1),
                      "clients": len(settings.auth.clients),
                      "oidc_issuer": settings.auth.oidc.issuer if settings.auth.oidc else None,
                      "audit_log": settings.audit_log}), flush=True)
    return serve(app, settings.host, settings.port, settings.drain_seconds, settings.log_level)


if __name__ == "__main__":
    sys.exit(main())
