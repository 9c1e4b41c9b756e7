#!/usr/bin/env python3
"""Per-call CPU of the gRPC front end (issue 19): process CPU seconds, and the event loop
thread's alone, per 10,000 mnist-mlp unary `ModelInfer` calls, beside REST binary requests of
the same run.

Throughput on a shared 2-core machine moves by 20% from minute to minute with other work; the
CPU a call costs the server moves much less, so this is the figure to compare two versions of
the connection layer by. The load generator is `h2load` (Debian's `nghttp2-client`): gRPC
with a prepared frame as `bench/serve.py` sends it, REST binary with `h2load --h1`; both a
fixed number of calls at c=32, one stream a connection. The server's CPU is read from
/proc/<pid>/stat (every thread: the loop, onnxruntime's threads) and /proc/<pid>/task/<pid>/stat
(the main thread, which runs the event loop) before and after each round; the figure is the
median of the rounds.

    .venv/bin/python bench/grpc_cpu.py --label "this tree"
    .venv/bin/python bench/grpc_cpu.py --label "after" --compare /tmp/old-tree "before"

`--compare DIR LABEL` also runs `python -m serving` from another tree (e.g. `git archive
<commit> serving | tar -x -C DIR`): both servers run side by side and their rounds alternate,
so two versions meet the same load from the rest of the machine. Each row replaces the row of
the same label in the `grpc-cpu` section of docs/benchmarks.md; the others are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import BENCHMARKS_MD, machine_line, write_section  # noqa: E402
from bench.serve import GRPC_METHOD, build, example_inputs, free_port, grpc_message, request_bodies, stop_server  # noqa: E402

SECTION = "grpc-cpu"
TABLE_HEAD = ("| label | gRPC process ms/call | gRPC loop thread ms/call | REST binary process "
              "ms/call | REST binary loop thread ms/call | rounds | load average |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |")
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: str) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK


def start(context: Path, server_root: Path, log: Path):
    import urllib.request
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "SERVEDMODEL_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--context", str(context),
                             "--host", "127.0.0.1", "--port", str(port),
                             "--grpc-port", str(grpc_port)], cwd=server_root, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                      timeout=1).status == 200:
                return proc, port, grpc_port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def h2load(args: list[str], calls: int, concurrency: int) -> None:
    out = subprocess.run(["h2load", "-t1", f"-c{concurrency}", "-m1", f"-n{calls}", *args],
                         capture_output=True, text=True, timeout=300)
    if f"{calls} succeeded" not in out.stdout:
        raise RuntimeError(f"h2load: {out.stdout[-1500:]} {out.stderr[-500:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="the row's name in the table")
    ap.add_argument("--compare", nargs=2, metavar=("DIR", "LABEL"),
                    help="also measure the serving/ of another tree, rounds alternating")
    ap.add_argument("--calls", type=int, default=10_000, help="calls a round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench", help="contexts go here")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    context = build("mnist-mlp", "none", args.out)
    manifest = json.loads((context / "model" / "manifest.json").read_text())
    feeds = example_inputs(manifest, 1, np.random.default_rng(1))
    rest_body, _, header_len = request_bodies(manifest, feeds)["binary"]
    message = grpc_message(manifest["name"], feeds)
    servers = [(args.label, ROOT)] + ([(args.compare[1], Path(args.compare[0]).resolve())]
                                      if args.compare else [])
    per_call = {label: {"grpc": [], "rest": []} for label, _ in servers}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        frame, body = Path(tmp) / "grpc.bin", Path(tmp) / "rest.bin"
        frame.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
        body.write_bytes(rest_body)
        running = []
        try:
            for label, root in servers:
                proc, port, grpc_port = start(context, root, Path(tmp) / f"log-{len(running)}")
                kinds = {
                    "grpc": ["-H", "content-type: application/grpc", "-H", "te: trailers",
                             "-d", str(frame), f"http://127.0.0.1:{grpc_port}{GRPC_METHOD}"],
                    "rest": ["--h1", "-H", "content-type: application/octet-stream",
                             "-H", f"inference-header-content-length: {header_len}",
                             "-d", str(body),
                             f"http://127.0.0.1:{port}/v2/models/{manifest['name']}/infer"],
                }
                running.append((label, proc, kinds))
            for _, _, kinds in running:            # warm both paths of every server up
                for kind in kinds.values():
                    h2load(kind, 2000, args.concurrency)
            for _ in range(args.rounds):
                for name in ("grpc", "rest"):     # interleaved: drift hits all alike
                    for label, proc, kinds in running:
                        proc_path = f"/proc/{proc.pid}/stat"
                        loop_path = f"/proc/{proc.pid}/task/{proc.pid}/stat"
                        p0, l0 = cpu_seconds(proc_path), cpu_seconds(loop_path)
                        h2load(kinds[name], args.calls, args.concurrency)
                        p1, l1 = cpu_seconds(proc_path), cpu_seconds(loop_path)
                        per_call[label][name].append(((p1 - p0) / args.calls * 1000,
                                                      (l1 - l0) / args.calls * 1000))
                loads.append(os.getloadavg()[0])
        finally:
            for _, proc, _ in running:
                stop_server(proc)

    def median(label: str, name: str, i: int) -> float:
        return statistics.median(x[i] for x in per_call[label][name])

    rows = []
    for label, _ in servers:
        rows.append(f"| {label} | {median(label, 'grpc', 0):.3f} | {median(label, 'grpc', 1):.3f} | "
                    f"{median(label, 'rest', 0):.3f} | {median(label, 'rest', 1):.3f} | {args.rounds} | "
                    f"{min(loads):.1f}-{max(loads):.1f} |")
        for name in ("grpc", "rest"):
            print(label, name, "process ms/call",
                  [round(x[0], 4) for x in per_call[label][name]],
                  "loop ms/call", [round(x[1], 4) for x in per_call[label][name]])
    print("\n".join(rows))
    if not args.no_write:
        write_section(SECTION, markdown(rows, [label for label, _ in servers], args))
        print(f"wrote the {SECTION} section of {BENCHMARKS_MD}")
    return 0


def _kept_rows(labels: list[str]) -> list[str]:
    """The table rows of the existing section, other than those of `labels`."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    start, end = f"<!-- bench:{SECTION}:start -->", f"<!-- bench:{SECTION}:end -->"
    if start not in text:
        return []
    section = text.split(start, 1)[1].split(end, 1)[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| label")]
    return [r for r in rows if r.split("|")[1].strip() not in labels]


def markdown(new_rows: list[str], labels: list[str], args) -> str:
    rows = _kept_rows(labels) + new_rows
    return "\n".join([
        "## gRPC per-call CPU (`bench/grpc_cpu.py`)",
        "",
        f"Last run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine_line()}, "
        f"a machine shared with other work. mnist-mlp (fp32), one item a call, "
        f"{args.calls:,} calls a round at c={args.concurrency} (h2load, 1 thread, one stream a "
        f"connection; REST binary with `h2load --h1`), the two kinds interleaved round by "
        f"round, after 2,000 warm-up calls each. \"process\": the server's CPU seconds (all "
        f"threads, model runs included) divided by the calls; \"loop thread\": the main "
        f"thread's alone (the event loop: the connection layers, decoding, batching). Median "
        f"of the rounds. Rows measured in one run (`--compare`) come from servers running "
        f"side by side, their rounds alternating, so the rest of the machine's load hits "
        f"them alike; compare rows of one run only.",
        "",
        TABLE_HEAD,
        *rows,
    ])


if __name__ == "__main__":
    sys.exit(main())
