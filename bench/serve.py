#!/usr/bin/env python3
"""Serving benchmark (issues 3 and 10): the server's throughput and p50/p99 latency at
concurrency 1/8/32/64, REST JSON and binary tensors and gRPC raw tensors, beside two in-process
references measured in the same run:

  (a) onnxruntime alone on the same model file, at its best batch size (1, 8 or 32);
  (b) the "Python floor" for one request: decode the request JSON, run the model at batch 1,
      encode the response JSON, no HTTP.

Models: mnist-mlp, minilm (fp32 and int8) and resnet-tiny (a CNN on 3x64x64), built with
`models.build` (cached). The load generator is Debian's `wrk` (`apt-get install wrk`) with a Lua
script, on 127.0.0.1 only; without wrk a small asyncio keep-alive client is used instead (it is
slower than the server, so its figures are a lower bound). gRPC load: `h2load` (Debian's
`nghttp2-client`) with a prepared gRPC frame, c connections of one stream each like wrk's;
without it, grpc.aio clients in a few processes (a lower bound, as above). Each model's server
is started `--runs` times (default 3): the table shows the median of the runs and their range,
and the preferred batch size each run's warm-up chose. Writes the `serve` section of
docs/benchmarks.md and prints PASS/FAIL per target. Not a test: run it on a quiet machine.

    .venv/bin/python bench/serve.py                 # everything, 5 s a point, 3 runs
    .venv/bin/python bench/serve.py --quick         # 2 s a point, 1 run
    .venv/bin/python bench/serve.py --models mnist-mlp --concurrency 32 --runs 1 --no-write
    .venv/bin/python bench/serve.py --abuse         # honest clients under attack (minilm)
    .venv/bin/python bench/serve.py --abuse --quick --abuse-context DIR --no-write
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine_line, write_section  # noqa: E402

MODELS = [("mnist-mlp", "none"), ("minilm", "none"), ("minilm", "int8"), ("resnet-tiny", "none")]
SEQ_LEN = 64                 # minilm tokens per request
LUA = r'''
wrk.method = "POST"
local f = io.open(os.getenv("BENCH_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local h = os.getenv("BENCH_IHCL")
if h ~= nil and h ~= "" then wrk.headers["Inference-Header-Content-Length"] = h end
local a = os.getenv("BENCH_AUTH")
if a ~= nil and a ~= "" then wrk.headers["Authorization"] = a end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
                        '"non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
'''


@dataclass
class Point:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    busy: float = 0.0        # share of the wall time the model was computing (from /metrics)
    mean_batch: float = 0.0
    served: int = -1         # gRPC: answers the load generator counted as 2xx (-1: not counted)


def metrics_text(port: int) -> str:
    """The server's /metrics exposition text."""
    import urllib.request
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def scrape(port: int) -> tuple[float, float, float]:
    """(compute seconds, batches, rows) so far, from the server's /metrics."""
    text = metrics_text(port)
    values = {}
    for line in text.splitlines():
        for name in ("servedmodel_compute_duration_seconds_sum", "servedmodel_batch_size_count",
                     "servedmodel_batch_size_sum"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return (values["servedmodel_compute_duration_seconds_sum"],
            values["servedmodel_batch_size_count"], values["servedmodel_batch_size_sum"])


def wait_until_idle(port: int, timeout: float = 120.0) -> None:
    """Until the server has no request in flight. When a load generator stops, the requests
    it had queued (up to c, about a second of minilm at c=64) are still computed: a point
    started before they are done would count their compute time as its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"^servedmodel_inflight_requests\{[^}]*\} (\S+)$", metrics_text(port),
                      re.M)
        if m is None or float(m.group(1)) == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server still had requests in flight after {timeout:.0f} s")


def cpu_limit() -> int:
    from servedmodel.serving.settings import cgroup_cpu_limit
    return cgroup_cpu_limit()


def build(model: str, compression: str, out: Path) -> Path:
    import servedmodel.models as models
    return models.build(model=model, compression=compression, out_dir=out / f"{model}-{compression}").context_dir


def example_inputs(manifest: dict, batch: int, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for t in manifest["inputs"]:
        shape = [batch] + [d if d >= 0 else SEQ_LEN for d in t["shape"][1:]]
        if t["datatype"] == "INT64":
            arr = rng.integers(1000, 5000, size=shape, dtype=np.int64)
            if t["name"] == "attention_mask":
                arr = np.ones(shape, dtype=np.int64)
        else:
            arr = rng.random(shape, dtype=np.float32)
        feeds[t["name"]] = arr
    return feeds


def request_bodies(manifest: dict, feeds) -> dict[str, tuple[bytes, str, str]]:
    """{"json": (body, content-type, header-length), "binary": (...)} for one request."""
    jdoc = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": t["datatype"],
                        "data": a.reshape(-1).tolist()}
                       for (n, a), t in zip(feeds.items(), manifest["inputs"])]}
    bdoc = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": t["datatype"],
                        "parameters": {"binary_data_size": a.nbytes}}
                       for (n, a), t in zip(feeds.items(), manifest["inputs"])],
            "parameters": {"binary_data_output": True}}
    header = orjson.dumps(bdoc)
    return {"json": (orjson.dumps(jdoc), "application/json", ""),
            "binary": (header + b"".join(a.tobytes() for a in feeds.values()),
                       "application/octet-stream", str(len(header)))}


GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def grpc_message(model_name: str, feeds) -> bytes:
    """One serialized ModelInferRequest with raw_input_contents (what tritonclient.grpc sends)."""
    from servedmodel.serving.codec import NUMPY_TO_V2
    from servedmodel.serving.v2grpc import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name=model_name)
    for name, arr in feeds.items():
        req.inputs.add(name=name, datatype=NUMPY_TO_V2[arr.dtype], shape=list(arr.shape))
        req.raw_input_contents.append(arr.tobytes())
    return req.SerializeToString()


def session(path: Path, spinning: bool = True):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_limit()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def timed_loop(fn, seconds: float) -> float:
    """Seconds per call of fn, run repeatedly for about `seconds`."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return elapsed / n


def reference_a(context: Path, manifest: dict, seconds: float):
    """onnxruntime alone at batch 1, 8 and 32, with thread spinning on (the default) and off
    (the server's setting), keeping the faster of the two at each batch size.
    Returns (best items/s, its batch size, seconds per batch of 8, seconds per batch of 32,
    `again`: a function that times that best setting once more for the given seconds)."""
    path = context / "model" / manifest["model_file"]
    sessions = [session(path, True), session(path, False)]
    rng = np.random.default_rng(0)
    per_batch, fastest = {}, {}
    for b in (1, 8, 32):
        feeds = example_inputs(manifest, b, rng)
        per_call, fastest_session = min(
            ((timed_loop(lambda s=s, feeds=feeds: s.run(None, feeds), seconds), s) for s in sessions),
            key=lambda timed: timed[0])
        per_batch[b], fastest[b] = per_call, (fastest_session, feeds)
    best = max(per_batch, key=lambda b: b / per_batch[b])
    best_session, best_feeds = fastest[best]

    def again(secs: float) -> float:
        return best / timed_loop(lambda: best_session.run(None, best_feeds), secs)

    return best / per_batch[best], best, per_batch[8], per_batch[32], again


def reference_b(context: Path, manifest: dict, seconds: float) -> float:
    """The Python floor: JSON request -> numpy -> run at batch 1 -> JSON response; requests/s."""
    sess = session(context / "model" / manifest["model_file"])
    feeds = example_inputs(manifest, 1, np.random.default_rng(0))
    body = request_bodies(manifest, feeds)["json"][0]
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    names = [t["name"] for t in manifest["outputs"]]

    def one():
        doc = orjson.loads(body)
        x = {i["name"]: np.array(i["data"], dtype=dtypes[i["datatype"]]).reshape(i["shape"])
             for i in doc["inputs"]}
        outs = cast("list[np.ndarray]", sess.run(names, x))  # dense outputs
        orjson.dumps({"outputs": [{"name": n, "shape": list(o.shape), "datatype": "FP32",
                                   "data": o.reshape(-1).tolist()} for n, o in zip(names, outs)]})

    return 1.0 / timed_loop(one, seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(context: Path, log: Path, extra_env: dict | None = None):
    port, grpc_port = free_port(), free_port()
    # Access logs on (as in production, to a file here: its "ready" line says which batch size
    # the warm-up preferred). The default shedding settings (a 5 s queue-time budget) are kept:
    # a closed loop of 64 clients must see no 503 with them.
    env = {**os.environ, "SERVEDMODEL_LOG_LEVEL": "info"}
    # stderr to a file, not a pipe: nobody reads a pipe while the load runs, and a full one
    # would block the server.
    errors = log.with_suffix(".stderr")
    for key in ("SERVEDMODEL_QUEUE_TIMEOUT_MS", "SERVEDMODEL_MAX_QUEUE_SIZE"):
        env.pop(key, None)
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--context", str(context),
                             "--host", "127.0.0.1", "--port", str(port),
                             "--grpc-port", str(grpc_port)], cwd=ROOT, env=env,
                            stdout=open(log, "wb"), stderr=open(errors, "wb"))
    import urllib.request
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {errors.read_text(errors='replace')[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status == 200:
                return proc, port, grpc_port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains), then SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_wrk(url: str, body: tuple, concurrency: int, seconds: float, workdir: Path,
            authorization: str = "") -> Point:
    data, ctype, ihcl = body
    body_file, lua = workdir / "body.bin", workdir / "post.lua"
    body_file.write_bytes(data)
    lua.write_text(LUA)
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_CTYPE": ctype, "BENCH_IHCL": ihcl,
           "BENCH_AUTH": authorization}
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                          "-s", str(lua), url], env=env, capture_output=True, text=True,
                         timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    r = json.loads(line[6:])
    return Point(r["requests"] / (r["duration_us"] / 1e6), r["p50_us"] / 1000, r["p99_us"] / 1000,
                 r["non2xx"] + r["errors"])


async def _async_load(port: int, path: str, body: tuple, concurrency: int, seconds: float) -> Point:
    data, ctype, ihcl = body
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\n"
            + (f"Inference-Header-Content-Length: {ihcl}\r\n" if ihcl else "") + "\r\n").encode()
    request, latencies, failed = head + data, [], [0]
    stop_at = time.perf_counter() + seconds

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if b" 200 " not in status_line:
                failed[0] += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    lat = np.array(latencies)
    return Point(len(lat) / (time.perf_counter() - t0), float(np.percentile(lat, 50) * 1000),
                 float(np.percentile(lat, 99) * 1000), failed[0])


H2LOAD_COUNTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                           r"(\d+) failed, (\d+) errored")


def run_h2load(port: int, message: bytes, concurrency: int, seconds: float,
               workdir: Path) -> Point:
    """h2load on the gRPC port: c connections, one stream each, the same framed request.

    Counted from h2load's per-request log, which h2load opens with O_APPEND: a fresh file each
    point (a reused one adds every earlier point's requests to this one's count). `served` in
    the returned Point is h2load's own count of 2xx answers, for `measure`'s check against the
    server's counters (a gRPC error is an HTTP 200 too: its status is in the trailers)."""
    frame, log = workdir / "grpc.bin", workdir / "h2load.log"
    frame.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
    log.unlink(missing_ok=True)
    out = subprocess.run(["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{max(1, round(seconds))}",
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "-d", str(frame), f"--log-file={log}",
                          f"http://127.0.0.1:{port}{GRPC_METHOD}"],
                         capture_output=True, text=True, timeout=seconds + 60)
    rows = ([line.split("\t") for line in log.read_text().splitlines() if line.strip()]
            if log.exists() else [])
    counts = H2LOAD_COUNTS.search(out.stdout)
    if not rows or counts is None:
        raise RuntimeError(f"h2load failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
    lat = np.array([int(r[2]) for r in rows]) / 1e6
    starts = np.array([int(r[0]) for r in rows]) / 1e6
    wall = (starts + lat).max() - starts.min()
    # HTTP errors here; gRPC errors (status in trailers) are counted from the server's metrics.
    failed = sum(1 for r in rows if r[1] != "200")
    p = Point(len(rows) / wall, float(np.percentile(lat, 50) * 1000),
              float(np.percentile(lat, 99) * 1000), failed)
    p.served = len(rows) - failed
    return p


def _grpc_worker(args) -> list[float]:
    """One load process: `streams` closed-loop callers on one channel; their latencies."""
    port, message, streams, seconds = args
    import grpc

    async def main():
        latencies = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(GRPC_METHOD)          # bytes in, bytes out
            stop_at = time.perf_counter() + seconds

            async def caller():
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    await call(message, timeout=30)
                    latencies.append(time.perf_counter() - t0)
            await asyncio.gather(*[caller() for _ in range(streams)])
        return latencies
    return asyncio.run(main())


def run_grpc_python(port: int, message: bytes, concurrency: int, seconds: float) -> Point:
    import multiprocessing

    procs = min(concurrency, max(1, cpu_limit()))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_grpc_worker, [(port, message, n, seconds) for n in shares])
    lat = np.array([x for part in parts for x in part])
    wall = time.perf_counter() - t0
    return Point(len(lat) / min(wall, seconds + 0.5), float(np.percentile(lat, 50) * 1000),
                 float(np.percentile(lat, 99) * 1000), 0)


def grpc_outcomes(port: int) -> tuple[float, float]:
    """(gRPC inference requests, of them successful) so far, from /metrics; calls the client
    cancelled (reason "abandoned": h2load's calls in flight when it stops) are not counted."""
    total = ok = 0.0
    for line in metrics_text(port).splitlines():
        if 'protocol="grpc"' not in line:
            continue
        if line.startswith("servedmodel_requests_total{"):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            ok += value if 'outcome="success"' in line else 0.0
        elif line.startswith("servedmodel_request_failures_total{") and \
                'reason="abandoned"' in line:
            total -= float(line.rsplit(" ", 1)[1])
    return total, ok


def measure(port, grpc_port, name, body, c, seconds, workdir) -> Point:
    """One point on an idle server (the caller waits for it: `wait_until_idle`)."""
    path = f"/v2/models/{name}/infer"
    before, t0 = scrape(port), time.perf_counter()
    if body[1] == "grpc":
        calls_before = grpc_outcomes(port)
        if shutil.which("h2load"):
            p = run_h2load(grpc_port, body[0], c, seconds, workdir)
        else:
            p = run_grpc_python(grpc_port, body[0], c, seconds)
        calls_after = grpc_outcomes(port)
        answered = calls_after[0] - calls_before[0]
        succeeded = calls_after[1] - calls_before[1]
        p.failed += int(answered - succeeded)
        # Every answer the load generator counted must be one the server computed: an answer
        # that never reached the handler (an unknown method, a message over the size limit,
        # a refused call) is an HTTP 200 with an error in its trailers, not in /metrics. The
        # server may count up to c more (calls cut off when the load generator stopped).
        if p.served >= 0 and not (p.served <= succeeded <= p.served + c):
            print(f"   WARNING: h2load counted {p.served} answers, the server answered "
                  f"{succeeded:.0f} successfully ({answered:.0f} in all): the difference "
                  f"counts as failed", flush=True)
            p.failed += int(max(0, p.served - succeeded))
    elif shutil.which("wrk"):
        p = run_wrk(f"http://127.0.0.1:{port}{path}", body, c, seconds, workdir)
    else:
        p = asyncio.run(_async_load(port, path, body, c, seconds))
    after, wall = scrape(port), time.perf_counter() - t0
    p.busy = (after[0] - before[0]) / wall
    batches = after[1] - before[1]
    p.mean_batch = (after[2] - before[2]) / batches if batches else 0.0
    return p


def ready_line(log: Path) -> dict:
    """The server's "ready" log line (access logs are flushed every 0.25 s)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"event":"ready"' in line:
                return json.loads(line)
        time.sleep(0.05)
    return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(f"{m}:{c}" for m, c in MODELS),
                    help="comma-separated model:compression")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--encodings", default="json,binary,grpc",
                    help="json and binary (REST), grpc (raw tensors)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds a point")
    ap.add_argument("--runs", type=int, default=None,
                    help="server starts per model, each measuring every point (default 3; "
                         "1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2 s a point, shorter references")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench", help="contexts go here")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--abuse", action="store_true",
                    help="only the abuse benchmark (issue 9): honest clients while a poisoning "
                         "client and a slow-connection flood run")
    ap.add_argument("--abuse-context", type=Path,
                    help="build context for --abuse (default: minilm, built)")
    ap.add_argument("--auth", action="store_true",
                    help="only the auth-cost benchmark (issue 21): server CPU per request with no "
                         "auth, a client token and an OIDC JWT (mnist-mlp, REST binary)")
    args = ap.parse_args()
    if args.abuse:
        return abuse_main(args)
    if args.auth:
        return auth_main(args)
    seconds = 2.0 if args.quick else args.duration
    runs = args.runs or (1 if args.quick else 3)
    ref_seconds = 0.5 if args.quick else 3.0
    point_ref_seconds = 0.5 if args.quick else 2.0
    conc = [int(c) for c in args.concurrency.split(",")]
    encodings = args.encodings.split(",")
    specs = [tuple(s.split(":")) if ":" in s else (s, "none") for s in args.models.split(",")]
    loadgen = "wrk (1 thread)" if shutil.which("wrk") else "asyncio client (wrk not found)"
    loadgen += ", gRPC: " + ("h2load (1 thread)" if shutil.which("h2load") else
                             "grpc.aio clients (h2load not found)")

    #: (label, encoding, c) -> one Point per run; label -> references (a) per run, (b),
    #: preferred batch per run
    points: dict[tuple, list[Point]] = {}
    ratios: dict[tuple, list[float]] = {}
    refs: dict[str, tuple] = {}
    ceilings: list[float] = []
    preferred: dict[str, list] = {}
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, compression in specs:
            label = f"{model} {compression}" if compression != "none" else model
            print(f"== {label}: building", flush=True)
            context = build(model, compression, args.out)
            manifest = json.loads((context / "model" / "manifest.json").read_text())
            items_per_request = 1
            b_rps = reference_b(context, manifest, ref_seconds)
            window_ms = manifest["batching"]["max_queue_delay_ms"]
            print(f"   (b) Python floor: {b_rps:,.0f} req/s", flush=True)
            feeds = example_inputs(manifest, items_per_request, np.random.default_rng(1))
            bodies = request_bodies(manifest, feeds)
            bodies["grpc"] = (grpc_message(manifest["name"], feeds), "grpc", "")
            for run in range(runs):
                # (a) again before every run: on a shared VM the same onnxruntime call varies
                # by 10-20% from one minute to the next, and a run is compared with its own.
                a_items, a_batch, t8, t32, a_again = reference_a(context, manifest, ref_seconds)
                refs.setdefault(label, ([], b_rps))[0].append((a_items, a_batch, t8))
                # At least ~24 full batches a point: a closed loop on a slow model gets its
                # answers in bursts of a batch (minilm at c=64: 32 every ~0.4 s), so a point
                # of 5 s holds 12 or 13 bursts depending on where it starts and ends, +-8%;
                # with 24 the error is half that. It also gives meaningful percentiles.
                point_seconds = max(seconds, 24 * t32)
                print(f"   run {run + 1}/{runs}: (a) onnxruntime alone {a_items:,.0f} items/s "
                      f"at batch {a_batch}; batch of 8: {t8 * 1000:.2f} ms", flush=True)
                log = Path(tmp) / f"server-{label}-{run}.log"
                proc, port, grpc_port = start_server(context, log)
                by_point = {}
                try:
                    ready = ready_line(log)
                    preferred.setdefault(label, []).append(ready.get("preferred_batch_size"))
                    print(f"   run {run + 1}/{runs}: preferred batch "
                          f"{ready.get('preferred_batch_size')}", flush=True)
                    for enc in encodings:
                        for c in conc:
                            # (a) once more, on the idle machine just before the point: the
                            # same onnxruntime call drifts by 10-20% within a minute on a
                            # shared VM, and a run's points take minutes.
                            wait_until_idle(port)
                            a_near = a_again(point_ref_seconds)
                            p = measure(port, grpc_port, manifest["name"], bodies[enc], c,
                                        point_seconds, Path(tmp))
                            ratio_a = p.rps * items_per_request / a_near
                            ratio_b = p.rps / b_rps
                            print(f"   {enc:6s} c={c:<3d} {p.rps:9,.0f} req/s  p50 {p.p50_ms:7.2f} ms  "
                                  f"p99 {p.p99_ms:7.2f} ms  {ratio_a:5.2f}x(a: {a_near:,.0f}/s) "
                                  f"{ratio_b:5.2f}x(b)  "
                                  f"busy {p.busy:4.0%} batch {p.mean_batch:4.1f}"
                                  f"{'  FAILED ' + str(p.failed) if p.failed else ''}", flush=True)
                            points.setdefault((label, enc, c), []).append(p)
                            ratios.setdefault((label, enc, c), []).append(ratio_a)
                            by_point[enc, c] = p
                            verdicts += targets(model, compression, enc, c, p, ratio_a, t8,
                                                window_ms, run)
                finally:
                    stop_server(proc)
                if model == "mnist-mlp" and ("grpc", 32) in by_point and ("binary", 32) in by_point:
                    g, r = by_point["grpc", 32].rps, by_point["binary", 32].rps
                    ceiling = (grpc_ceiling(bodies["grpc"][0], 32, point_seconds, Path(tmp))
                               if shutil.which("h2load") else None)
                    why = ""
                    if ceiling is not None:
                        ceilings.append(ceiling)
                        why = f"; grpc.aio answering without doing anything: {ceiling:,.0f} req/s"
                    verdicts.append((g >= r, f"mnist-mlp gRPC raw c=32 run {run + 1}: "
                                             f"{g:,.0f} req/s (target >= REST binary "
                                             f"{r:,.0f} req/s of the same run{why})"))
            if model == "minilm" and compression == "none":
                # Judged on the median of the runs, the figure the table shows (the issue asks
                # "in three consecutive runs" of resnet-tiny only, not of minilm).
                for (lab, enc, c), rs in ratios.items():
                    if lab == label and c in (8, 32, 64) and enc != "grpc":
                        each = ", ".join(f"{r:.2f}" for r in rs)
                        verdicts.append((_median(rs) >= 0.9, f"minilm {enc} c={c}: median "
                                         f"{_median(rs):.2f} of (a) over {len(rs)} run(s) "
                                         f"({each}) (target >= 0.9)"))

    print()
    for ok, text in verdicts:
        print(("PASS " if ok else "FAIL ") + text)
    if not args.no_write:
        write_section("serve", markdown(points, ratios, refs, preferred, verdicts, ceilings,
                                        seconds, ref_seconds, point_ref_seconds, runs,
                                        loadgen))
        print("wrote the serve section of docs/benchmarks.md")
    return 0


def targets(model, compression, enc, c, p, ratio_a, t8, window_ms, run):
    out = []
    label = f"{model}{'' if compression == 'none' else ' ' + compression}"
    tag = f"run {run + 1}"
    if p.failed:
        out.append((False, f"{label} {enc} c={c} {tag}: {p.failed} failed requests"))
    if model == "mnist-mlp" and c == 32 and enc == "json":
        out.append((p.rps >= 2600, f"mnist-mlp JSON c=32 {tag}: {p.rps:,.0f} req/s "
                                   f"(target >= 2,600)"))
    if model == "resnet-tiny" and enc == "binary" and c == 32:
        out.append((ratio_a >= 0.5, f"resnet-tiny binary c=32 {tag}: {ratio_a:.2f} of (a) "
                                    f"(target >= 0.5 in every run)"))
    if c == 8 and enc != "grpc":
        bound = 2 * (t8 * 1000 + window_ms)
        out.append((p.p99_ms <= bound, f"{label} {enc} c=8 {tag} p99 {p.p99_ms:.2f} ms "
                                       f"(target <= 2 x ({t8 * 1000:.2f} + {window_ms}) = {bound:.2f} ms)"))
    return out


def _median(values):
    return float(np.median(values))


def grpc_ceiling(message: bytes, concurrency: int, seconds: float, workdir: Path) -> float:
    """req/s h2load gets from bench/grpc_echo.py (grpc.aio, a handler that does nothing),
    with the same request and the same load as the model's gRPC point."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "grpc_echo.py"),
                             "--port", str(port), "--answer-bytes", "64"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("bench/grpc_echo.py did not start")
            time.sleep(0.1)
        return run_h2load(port, message, concurrency, seconds, workdir).rps
    finally:
        stop_server(proc)


def markdown(points, ratios, refs, preferred, verdicts, ceilings, seconds, ref_seconds,
             point_ref_seconds, runs, loadgen) -> str:
    lines = [
        "## Serving (`bench/serve.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}; "
        f"load generator {loadgen} on 127.0.0.1, at least {seconds:g} s a point (24 batches of 32 "
        f"for slow models), default shedding settings; one request = one item "
        f"(minilm: {SEQ_LEN} tokens). (a) = onnxruntime alone on the same file at its best batch "
        "size (the faster of thread spinning on and off, each timed for "
        f"{ref_seconds:g} s per batch size), measured before each run; \"÷ (a)\" divides each "
        "point's req/s by that best setting timed once more for "
        f"{point_ref_seconds:g} s on the idle server just before the point (the same "
        "onnxruntime call drifts by 10-20% within a minute on a shared VM); (b) = the Python floor (decode request "
        "JSON, run at "
        "batch 1, encode response JSON, no HTTP). `grpc` = gRPC with raw tensors "
        "(`raw_input_contents`, as tritonclient.grpc sends them).",
        "",
        f"Each model's server was started {runs} time(s) and every point measured in each run: "
        "req/s and the ratios are the median of the runs (the references column: the median "
        "(a) of the runs), \"range\" their lowest and highest "
        "req/s, latencies the median of the runs' percentiles, \"failed\" the sum. \"busy\" is "
        "the share of wall time the model was computing (from the server's "
        "`servedmodel_compute_duration_seconds`), \"batch\" the mean rows per batch: a "
        "compute-bound model near 100% busy is as fast as onnxruntime can be on the CPU left "
        "to it, whatever else runs on the machine.",
        "",
        "| model | references | encoding | c | req/s | range | p50 ms | p99 ms | ÷ (a) | ÷ (b) | busy | batch "
        "| failed |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (label, enc, c), ps in points.items():
        a_runs, b_rps = refs[label]
        a_items = _median([a for a, _, _ in a_runs])
        a_batches = sorted({b for _, b, _ in a_runs})
        ref = (f"(a) {a_items:,.0f}/s @b{'/'.join(map(str, a_batches))}, "
               f"(b) {b_rps:,.0f}/s")
        rps = [p.rps for p in ps]
        med = _median(rps)
        lines.append(f"| {label} | {ref} | {enc} | {c} | {med:,.0f} | "
                     f"{min(rps):,.0f}-{max(rps):,.0f} | {_median([p.p50_ms for p in ps]):.2f} | "
                     f"{_median([p.p99_ms for p in ps]):.2f} | "
                     f"{_median(ratios[label, enc, c]):.2f} | "
                     f"{med / b_rps:.2f} | {_median([p.busy for p in ps]):.0%} | "
                     f"{_median([p.mean_batch for p in ps]):.1f} | {sum(p.failed for p in ps)} |")
    lines += ["", "Preferred batch size chosen by the warm-up, per run: " + "; ".join(
        f"{label} {', '.join(str(b) for b in runs_)}" for label, runs_ in preferred.items()) + "."]
    if ceilings:
        lines += ["", "gRPC stack ceiling (`bench/grpc_echo.py`: grpc.aio whose `ModelInfer` "
                  "returns a fixed answer without reading the request; same h2load load, c=32, "
                  "measured after each mnist-mlp run): "
                  + ", ".join(f"{c:,.0f}" for c in ceilings) + " req/s."]
    lines += ["", "Targets:", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in verdicts]
    return "\n".join(lines)


# -- abuse (issue 9): one bad caller must cost the others nothing ------------------------------

ABUSE_HONEST = 8                 # honest closed-loop clients
ABUSE_POISON = 2                 # clients sending token ids outside the vocabulary
ABUSE_SLOW = 400                 # slow connections: half never finish their head, half their body
ABUSE_BIG = 8                    # unfinished 48 MB bodies (of 60 MB declared)


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _request(path: str, body: tuple) -> bytes:
    data, ctype, ihcl = body
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\n"
            + (f"Inference-Header-Content-Length: {ihcl}\r\n" if ihcl else "")
            + "\r\n").encode() + data


async def _closed_loop(port: int, request: bytes, stop: float, out: list) -> None:
    """One keep-alive client: (status, seconds) per request into `out`; reconnects when the
    server closes (a 503 at the connection cap closes)."""
    reader = writer = None
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None               # opened with the writer
            writer.write(request)
            status_line = await asyncio.wait_for(reader.readline(), 30)
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                low = line.lower()
                if low.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif low.startswith(b"connection:") and b"close" in low:
                    close = True
            await reader.readexactly(length)
            status = int(status_line.split()[1]) if status_line else 0
        except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            status, close = 0, True
        out.append((status, time.perf_counter() - t0))
        if close and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _slow_flood(port: int, path: str, n: int, big: int, stop: float) -> int:
    """Open `n` slow connections (half trickle a head that never ends, half stall a body) and
    `big` unfinished large bodies; keep them until `stop`. Returns how many were opened."""
    writers = []
    for i in range(n + big):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        if i >= n:
            w.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {60 << 20}\r\n\r\n"
                    .encode() + b"0" * (48 << 20))
        elif i % 2:
            w.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                    .encode() + b"[")
        else:
            w.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        writers.append(w)
    while time.perf_counter() < stop:
        await asyncio.sleep(0.5)
        for w in writers[:n:2]:
            if not w.is_closing():
                w.write(b"X")                  # a trickling head byte
    for w in writers:
        w.transport.abort()                    # the attacker leaves: no flushing, no FIN wait
    return len(writers)


def _flood_process(port: int, path: str, n: int, big: int, seconds: float) -> None:
    asyncio.run(_slow_flood(port, path, n, big, time.perf_counter() + seconds))


def _summary(results: list) -> tuple[float, float, float, float, int]:
    """(success share, p50 ms, p99 ms, successful req/s over the phase, count)."""
    if not results:
        return 0.0, 0.0, 0.0, 0.0, 0
    ok = [t for s, t in results if s == 200]
    lat = np.array(ok) * 1000 if ok else np.array([0.0])
    return (len(ok) / len(results), float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
            0.0, len(results))


async def _abuse_phase(port, path, honest, poison, seconds, attack, pid):
    stop = time.perf_counter() + seconds
    good: list = []
    bad: list = []
    rss_peak = [0.0]

    async def sample():
        while time.perf_counter() < stop:
            rss_peak[0] = max(rss_peak[0], _rss(pid))
            await asyncio.sleep(0.2)

    tasks = [_closed_loop(port, honest, stop, good) for _ in range(ABUSE_HONEST)]
    flood = None
    if attack:
        tasks += [_closed_loop(port, poison, stop, bad) for _ in range(ABUSE_POISON)]
        # The flood runs in its own process, so the honest clients' timings are not the
        # flood's own event loop at work.
        import multiprocessing
        flood = multiprocessing.get_context("spawn").Process(
            target=_flood_process, args=(port, path, ABUSE_SLOW, ABUSE_BIG, seconds))
        flood.start()
    tasks.append(sample())
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    if flood is not None:
        flood.join(30)
    share, p50, p99, _, n = _summary(good)
    return {"share": share, "p50": p50, "p99": p99, "n": n,
            "rps": sum(1 for s, _ in good if s == 200) / wall,
            "poison": sorted({s for s, _ in bad}), "rss_peak": rss_peak[0]}


def abuse_main(args) -> int:
    seconds = 4.0 if args.quick else 20.0
    context = args.abuse_context or build("minilm", "none", args.out)
    manifest = json.loads((context / "model" / "manifest.json").read_text())
    name = manifest["name"]
    path = f"/v2/models/{name}/infer"
    feeds = example_inputs(manifest, 1, np.random.default_rng(1))
    honest = _request(path, request_bodies(manifest, feeds)["json"])
    poisoned = {k: v.copy() for k, v in feeds.items()}
    token = next((k for k, t in zip(feeds, manifest["inputs"]) if t["datatype"] == "INT64"), None)
    if token is None:
        print("abuse: the model has no INT64 (token) input to poison", file=sys.stderr)
        return 2
    poisoned[token].reshape(-1)[0] = 10 ** 9
    poison = _request(path, request_bodies(manifest, poisoned)["json"])
    proc, port, _grpc_port = start_server(context, Path(tempfile.mkdtemp(prefix="abuse-")) / "server.log")
    try:
        rss_start = _rss(proc.pid)
        alone = asyncio.run(_abuse_phase(port, path, honest, poison, seconds, False, proc.pid))
        rss_before = _rss(proc.pid)
        attacked = asyncio.run(_abuse_phase(port, path, honest, poison, seconds, True, proc.pid))
        time.sleep(3.0)                        # floods over: memory should come back
        rss_after = _rss(proc.pid)
        metrics = metrics_text(port)
    finally:
        stop_server(proc)
    def by_reason(metric):
        return {line.split('reason="')[1].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
                for line in metrics.splitlines() if line.startswith(metric + "{")}
    closed = by_reason("servedmodel_connection_errors_total")
    failed = by_reason("servedmodel_request_failures_total")
    lines = [
        "## Serving under abuse (issue 9)",
        "",
        f"`bench/serve.py --abuse{' --quick' if args.quick else ''}`, {name}, {machine_line()}. "
        f"{ABUSE_HONEST} honest closed-loop clients (JSON, one sequence of {SEQ_LEN} tokens), "
        f"{seconds:g} s a phase; the attack adds {ABUSE_POISON} clients sending a token id of "
        f"10^9, {ABUSE_SLOW} slow connections (half trickle a head that never ends, half stall "
        f"a body) and {ABUSE_BIG} unfinished 48 MB uploads.",
        "",
        "| phase | honest requests | honest success | p50 ms | p99 ms | honest req/s | poison answers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, r in (("alone", alone), ("under attack", attacked)):
        lines.append(f"| {label} | {r['n']} | {r['share']:.1%} | {r['p50']:.1f} | {r['p99']:.1f} "
                     f"| {r['rps']:.1f} | {', '.join(map(str, r['poison'])) or '-'} |")
    lines += ["", f"RSS: {rss_start:.0f} MiB at start, {rss_before:.0f} MiB before the floods, "
                  f"{attacked['rss_peak']:.0f} MiB at their peak, {rss_after:.0f} MiB 3 s after. "
                  f"Connections closed by a limit: "
                  + (", ".join(f"{k} {v}" for k, v in sorted(closed.items())) or "none")
                  + ". Failed requests by reason: "
                  + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none") + "."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("serve-abuse", text)
        print("wrote the serve-abuse section of docs/benchmarks.md")
    return 0



# -- auth cost (issue 21) ------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def auth_main(args) -> int:
    """Server CPU per request for the same load (mnist-mlp, REST binary, c=8) with no auth, the
    old single token (client `default`) and an OIDC JWT (RS256, verified once, then cached):
    three servers up at once, measured in alternation, medians of the rounds."""
    seconds = 2.0 if args.quick else 5.0
    rounds = args.runs or (2 if args.quick else 5)
    if not shutil.which("wrk"):
        print("auth: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    context = build("mnist-mlp", "none", args.out)
    manifest = json.loads((context / "model" / "manifest.json").read_text())
    name = manifest["name"]
    body = request_bodies(manifest, example_inputs(manifest, 1, np.random.default_rng(0)))["binary"]
    # The tests' OIDC issuer on 127.0.0.1 (discovery + JWKS over HTTP), one RSA key.
    from tests.serving.authkit import Issuer

    issuer = Issuer()
    issuer.add_key("bench")
    jwt_token = issuer.token("bench", sub="bench-user", azp="bench-app", aud="bench", exp_in=3600,
                             scope="models:infer")
    modes = {"none": ({}, ""), "token": ({"SERVEDMODEL_AUTH_TOKEN": "bench-token-0123456789"},
                                         "Bearer bench-token-0123456789"),
             "jwt": ({"SERVEDMODEL_OIDC_ISSUER": issuer.url, "SERVEDMODEL_OIDC_AUDIENCE": "bench",
                      "SERVEDMODEL_OIDC_SCOPE": "models:infer"}, f"Bearer {jwt_token}")}
    servers, cpu = {}, {m: [] for m in modes}
    rps = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        try:
            for mode, (env, _) in modes.items():
                servers[mode] = start_server(context, Path(tmp) / f"{mode}.log", env)
            for r in range(rounds + 1):              # round 0 warms every server up
                for mode, (_, header) in modes.items():
                    proc, port, _ = servers[mode]
                    wait_until_idle(port)
                    before = _cpu_seconds(proc.pid)
                    p = run_wrk(f"http://127.0.0.1:{port}/v2/models/{name}/infer", body, 8, seconds,
                                Path(tmp), header)
                    used = _cpu_seconds(proc.pid) - before
                    if p.failed:
                        print(f"auth: {mode}: {p.failed} failed requests", file=sys.stderr)
                        return 1
                    if r:
                        n = p.rps * seconds
                        cpu[mode].append(used / n * 1e6)
                        rps[mode].append(p.rps)
                    print(f"   round {r} {mode}: {p.rps:.0f} req/s, {used / (p.rps * seconds) * 1e6:.0f} us "
                          f"CPU/request", flush=True)
        finally:
            for proc, _, _ in servers.values():
                stop_server(proc)
            issuer.close()
    med = {m: _median(v) for m, v in cpu.items()}
    ratio = med["jwt"] / med["token"]
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    rows = "\n".join(f"| {m} | {med[m]:.0f} ({min(cpu[m]):.0f}-{max(cpu[m]):.0f}) | {_median(rps[m]):.0f} |"
                      for m in modes)
    md = (f"## Auth cost (`bench/serve.py --auth`)\n\n"
          f"{time.strftime('%Y-%m-%d')}, {machine_line()}; mnist-mlp, REST binary, c=8, wrk (1 thread), "
          f"{rounds} rounds of {seconds:g} s per mode, the three servers measured in alternation. CPU is "
          f"the server process's (user + system, every thread) divided by the requests answered.\n\n"
          f"| auth | server CPU per request, us (median, range) | req/s (median) |\n| --- | --- | --- |\n"
          f"{rows}\n\n"
          f"Target: a JWT request costs <= 10% more CPU than a token request: **{verdict}** "
          f"(JWT / token = {ratio:.3f}). A token's signature is verified once (RS256, ~0.1 ms) and the "
          f"result kept by the token's sha256 until it expires (at most 5 min, 10,000 tokens), so a "
          f"caller that reuses its token pays a sha256 and a dictionary lookup per request.\n")
    print(md)
    if not args.no_write:
        write_section("auth", md)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
