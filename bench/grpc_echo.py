#!/usr/bin/env python3
"""The gRPC stack's own ceiling, for bench/serve.py: a grpc.aio server, configured like the
serving image's (same message limits), whose `ModelInfer` does nothing but return a fixed,
pre-serialised answer. What h2load gets from it is the most any grpc.aio handler could answer
on this machine, model and request path aside.

    .venv/bin/python bench/grpc_echo.py --port 9001 --answer-bytes 60
"""
from __future__ import annotations

import argparse
import asyncio

import grpc

METHOD_SERVICE = "inference.GRPCInferenceService"


async def serve(port: int, answer: bytes, max_message_bytes: int) -> None:
    async def model_infer(request: bytes, context) -> bytes:
        return answer

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        METHOD_SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--answer-bytes", type=int, default=64,
                    help="size of the fixed answer (a ModelInferResponse of this size)")
    ap.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    args = ap.parse_args()
    # Field 1 (model_name), length-delimited: a valid ModelInferResponse of the asked size.
    size = max(0, args.answer_bytes - 3)
    answer = b"\x0a" + bytes([0x80 | (size & 0x7F), size >> 7]) + b"m" * size
    asyncio.run(serve(args.port, answer, args.max_message_bytes))


if __name__ == "__main__":
    main()
