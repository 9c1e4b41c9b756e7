"""Benchmark of the linux/arm64 serving image under QEMU emulation (issue 22) -> the
"image-arm64" section of docs/benchmarks.md.

With the real Docker engine, the registry on 127.0.0.1:5000 and the arm64 emulation and base
that .ci/prepare-docker.sh and .ci/prepare-arm64.sh provide, for mnist-mlp (fp32) and lenet
(int8), from one context each:
  - the image size on each platform (uncompressed, as `docker images` shows it);
  - arm64 build time: cold (`--no-cache`: pip installs the aarch64 wheels under emulation) and
    for a model-only change (only the last step runs);
  - start-up to /v2/health/ready on each platform (median of several runs);
  - one inference of the same inputs on each platform: the largest difference.
Emulated timings are QEMU's, not arm64 speed: they say what CI pays, nothing about Graviton.
Usage: python bench/image_arm64.py [--runs N] [--no-cold]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from image import BASE_IMAGE, MB, build, docker, free_port, image_size, inspect, median_cold_start, preflight  # noqa: E402
from report import machine_line, write_section  # noqa: E402

ARM64_BASE_IMAGE = "servedmodel-ci/python:3.11-slim-arm64"   # what .ci/prepare-arm64.sh builds
ARM64 = ["--platform", "linux/arm64", "--build-arg", f"BASE_IMAGE={ARM64_BASE_IMAGE}"]
MODELS = [("mnist-mlp", "none"), ("lenet", "int8")]
ARM64_TIMEOUT = 600


def infer(image: str, manifest: dict, feeds: dict[str, np.ndarray], platform: str | None) -> dict:
    """Start the image, wait for ready, send one JSON inference, return the outputs."""
    port = free_port()
    args = ["run", "--detach", "--network", "host", "--env", "SERVEDMODEL_HOST=127.0.0.1",
            "--env", f"SERVEDMODEL_PORT={port}"]
    if platform:
        args += ["--platform", platform]
    cid = docker(*args, image).stdout.strip()
    try:
        body = json.dumps({"inputs": [{"name": k, "datatype": "FP32", "shape": list(v.shape),
                                       "data": v.ravel().tolist()} for k, v in feeds.items()]}).encode()
        deadline = time.monotonic() + ARM64_TIMEOUT
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{manifest['name']}/infer",
                                             data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    out = json.load(r)["outputs"]
                return {o["name"]: np.array(o["data"], dtype=np.float64).reshape(o["shape"]) for o in out}
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        docker("rm", "--force", cid, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="start-ups per image (median)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (--no-cache) arm64 build")
    opts = ap.parse_args()
    problems = preflight()
    if docker("image", "inspect", ARM64_BASE_IMAGE, check=False).returncode:
        problems.append(f"no {ARM64_BASE_IMAGE} in the engine (run .ci/prepare-arm64.sh)")
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    import servedmodel.models as models

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-arm64-"))
    rows = []
    for i, (m, c) in enumerate(MODELS):
        r = models.build(model=m, compression=c, out_dir=work / f"{m}-{c}", device="cpu")
        ctx = Path(r.context_dir)
        amd, arm = f"servedmodel-bench/{m}:{r.version}", f"servedmodel-bench/{m}:{r.version}-arm64"
        build(ctx, amd)
        cold = build(ctx, arm, *ARM64, "--no-cache") if i == 0 and not opts.no_cold else None
        build(ctx, arm, *ARM64)
        # A model-only change: the same context with a manifest one byte longer, so exactly the
        # last step (`COPY model/`) is not in the cache, whatever other images share the rest.
        changed = work / f"{m}-{c}-changed"
        shutil.copytree(ctx, changed)
        with open(changed / "model" / "manifest.json", "a") as f:
            f.write("\n")
        step = build(changed, f"{arm}-step", *ARM64)
        docker("rmi", f"{arm}-step")
        assert inspect(arm, "{{json .Architecture}}") == "arm64"
        start_amd = median_cold_start(amd, opts.runs)
        start_arm = median_cold_start(arm, opts.runs, timeout=ARM64_TIMEOUT, platform="linux/arm64")
        rng = np.random.default_rng(7)
        feeds = {t["name"]: rng.standard_normal([8 if k == 0 else d for k, d in enumerate(t["shape"])])
                 .astype(np.float32) for t in r.manifest["inputs"]}
        got_amd, got_arm = infer(amd, r.manifest, feeds, None), infer(arm, r.manifest, feeds, "linux/arm64")
        diff = max(float(np.abs(got_amd[k] - got_arm[k]).max()) for k in got_amd)
        rows.append({"model": m, "compression": c, "version": r.version, "amd64": image_size(amd),
                     "arm64": image_size(arm), "cold": cold, "step": step,
                     "start_amd": start_amd, "start_arm": start_arm, "diff": diff})
        print(json.dumps(rows[-1], default=str), flush=True)

    def secs(x):
        return "-" if x is None else f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"

    md = ["## Serving image on linux/arm64, emulated (`bench/image_arm64.py`)", "",
          f"Measured {started} on {machine_line()}; Docker engine "
          f"{docker('version', '--format', '{{.Server.Version}}').stdout.strip()}, classic builder, arm64 "
          f"under QEMU user emulation ({os.popen('qemu-aarch64-static --version').read().splitlines()[0]}); "
          f"bases: `{BASE_IMAGE}` {image_size(BASE_IMAGE) / MB:.0f} MB (amd64) and `{ARM64_BASE_IMAGE}` "
          f"{image_size(ARM64_BASE_IMAGE) / MB:.0f} MB (arm64), the Debian stand-ins of .ci/. Load average at the "
          f"start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f}.", "",
          "**Emulated timings are not arm64 speed.** Every arm64 instruction here is translated by QEMU on "
          f"an x86-64 CPU (the emulated start took {min(r['start_arm'][0] / r['start_amd'][0] for r in rows):.0f}-"
          f"{max(r['start_arm'][0] / r['start_amd'][0] for r in rows):.0f}x the native amd64 one); the figures say "
          "what a build and a CI run cost on this machine, nothing about Graviton.", "",
          "| model | compression | version | image amd64 | image arm64 | arm64 build, cold "
          "| arm64 build, model step | ready amd64 (native) | ready arm64 (emulated) | max abs diff arm64 vs amd64 |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        md.append(f"| {row['model']} | {row['compression']} | `{row['version']}` | {row['amd64'] / MB:.0f} MB "
                  f"| {row['arm64'] / MB:.0f} MB | {secs(row['cold'])} | {secs(row['step'])} "
                  f"| {row['start_amd'][0]:.2f} s | {row['start_arm'][0]:.1f} s | {row['diff']:.2g} |")
    md += ["", f"Start-up: median of {opts.runs} `docker run` -> first 200 from `/v2/health/ready` "
           "(read-only root, tmpfs /tmp). Cold build: `--no-cache` (the first model only), so pip downloads and "
           "installs the aarch64 wheels under emulation; every later model shares that layer. Model step: a "
           "model-only change (the context with its manifest one byte longer), so only `COPY model/` runs. "
           "The difference column is one batch of 8 random inputs through both servers (JSON)."]
    write_section("image-arm64", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
