"""Benchmark of the serving image (issue 5) -> the "image" section of docs/benchmarks.md.

Measures, with the real Docker engine and the registry on 127.0.0.1:5000 that
.ci/prepare-docker.sh provides:
  - image size per zoo model and compression, and the size of its model layer;
  - build time: cold (no cache), warm (unchanged context), and a model-only change;
  - what a model-only change pushes (layers new to the registry, and their bytes);
  - cold start: `docker run` -> /v2/health/ready answers 200 (median of several runs);
  - beside it, the seed-style image that serves the same model with torch (TorchScript in
    the same base image with torch's CPU wheel installed), measured in the same run;
  - the GPU image (Dockerfile.cuda): cold build time, size, and whether the CUDA provider's
    libraries all resolve (no GPU here: throughput on a GPU is not measured).
Prints PASS/FAIL for each target and writes the section. Usage: python bench/image.py
[--models ...] [--compressions ...] [--runs N] [--no-gpu]

`python bench/image.py --layers [--no-gpu]` measures only what the cold-start budget needs
(components/coldstart.py): the compressed bytes of the image's runtime layers (everything but
the model layer) per device, read from the registry manifest of the real image pushed to the
local registry, and writes them to components/image_layers.json.
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
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import machine_line, write_section  # noqa: E402  (bench/ is sys.path[0])

REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "python:3.11-slim"
ZOO = ["mnist-mlp", "lenet", "resnet-tiny", "minilm"]
COMPRESSIONS = ["none", "fp16", "int8"]
COLD_START_TARGETS = {"mnist-mlp": 2.0, "minilm": 5.0}
SIZE_RATIO_TARGET = 0.25
MB = 1e6


def sh(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh("docker", *args, **kw)


def inspect(obj: str, fmt: str):
    return json.loads(docker("inspect", "--format", fmt, obj).stdout)


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def build(context: Path, tag: str, *extra: str) -> float:
    t0 = time.monotonic()
    docker("build", "--network", "host", "--tag", tag, *extra, str(context))
    return time.monotonic() - t0


def model_step_build(context: Path, tag: str) -> float:
    """Seconds to build a context whose dependency and server layers are cached but whose
    model layer is not: the image is built (perhaps from cache), removed with nothing but its
    own last step (its parents are shared with other images), and built again."""
    build(context, tag)
    docker("rmi", "--force", inspect(tag, "{{json .Id}}"))
    return build(context, tag)


def image_size(tag: str) -> int:
    return int(inspect(tag, "{{json .Size}}"))


def last_layer_size(tag: str) -> int:
    """Bytes of the image's newest layer: the model layer, since `COPY model/` comes last."""
    rows = docker("history", "--human=false", "--format", "{{.Size}}", tag).stdout.split()
    return int(rows[0])


def cold_start(image: str, port: int, env: dict[str, str] | None = None, timeout: float = 120,
               platform: str | None = None) -> float:
    """Seconds from `docker run` to the first 200 from /v2/health/ready."""
    env = {"SERVEDMODEL_HOST": "127.0.0.1", "SERVEDMODEL_PORT": str(port), **(env or {})}
    args = ["run", "--detach", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if platform is not None:
        args += ["--platform", platform]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    t0 = time.monotonic()
    cid = docker(*args, image).stdout.strip()
    try:
        while time.monotonic() - t0 < timeout:
            if http_status(f"http://127.0.0.1:{port}/v2/health/ready", timeout=0.5) == 200:
                return time.monotonic() - t0
            time.sleep(0.02)
        raise RuntimeError(f"{image} not ready in {timeout}s:\n{docker('logs', cid, check=False).stderr[-2000:]}")
    finally:
        docker("rm", "--force", cid, check=False)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_cold_start(image: str, runs: int, env: dict[str, str] | None = None, timeout: float = 120,
                      platform: str | None = None) -> tuple[float, list[float]]:
    times = [cold_start(image, free_port(), env, timeout, platform) for _ in range(runs)]
    return statistics.median(times), times


def registry_manifest(repo: str, tag: str) -> dict:
    req = urllib.request.Request(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def push_tally(output: str) -> dict[str, int]:
    lines = output.splitlines()
    return {"pushed": sum(line.endswith(": Pushed") for line in lines),
            "already there": sum(line.endswith(": Layer already exists") for line in lines),
            "mounted": sum(": Mounted from " in line for line in lines)}


# --- the seed-style torch image --------------------------------------------------------------
TORCH_DOCKERFILE = """\
# The seed-style image: TorchScript served by torch in the same base image. The wheels are
# installed in a first stage, so the image carries the installed torch only, not its wheels.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-index --only-binary=:all: /tmp/wheels/*.whl
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home servedmodel
COPY --from=deps /opt/venv /opt/venv
COPY server.py model.pt example.pt /app/
USER 10001
CMD ["python3", "/app/server.py"]
"""

TORCH_SERVER = """\
# A minimal TorchScript server, as the seed served models: load, warm up, answer V2 health
# and a JSON infer.
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import torch
torch.set_grad_enabled(False)
model = torch.jit.load("/app/model.pt").eval()
example = torch.load("/app/example.pt")
model(*example)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _send(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send(200 if self.path in ("/v2/health/ready", "/v2/health/live") else 404)
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        args = [torch.tensor(i["data"]).reshape(i["shape"]) for i in req["inputs"]]
        out = model(*args)
        outs = out if isinstance(out, (tuple, list)) else [out]
        answer = {"outputs": [{"shape": list(o.shape), "data": o.flatten().tolist()} for o in outs]}
        self._send(200, json.dumps(answer).encode())

address = (os.environ.get("SERVEDMODEL_HOST", "127.0.0.1"), int(os.environ.get("SERVEDMODEL_PORT", "8080")))
ThreadingHTTPServer(address, Handler).serve_forever()
"""


def torch_wheel() -> Path:
    """torch's CPU wheel from this machine's disk (pip's find-links); never a download."""
    found = sorted(Path("/opt/wheels").glob("torch-*+cpu-cp311-*.whl"))
    if not found:
        dl = Path(tempfile.mkdtemp(prefix="torch-wheel-"))
        sh(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dl),
           "--no-index", "--find-links", "/opt/wheels", "torch")
        found = sorted(dl.glob("torch-*.whl"))
    if not found:
        raise RuntimeError("no torch CPU wheel on this machine (looked in /opt/wheels)")
    return found[-1]


def torch_context(model: str, out: Path) -> Path:
    import importlib

    import torch

    from servedmodel.models.zoo import ZOO as ZOO_FACTORIES

    mod, fn = ZOO_FACTORIES[model][0].split(":")
    spec = getattr(importlib.import_module(mod), fn)()
    module = spec.module.eval()
    example = tuple(spec.example_inputs)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        # A module traces to a ScriptModule (the annotation also covers tracing a function).
        traced = cast(torch.jit.ScriptModule, torch.jit.trace(module, example, strict=False, check_trace=False))
    traced.save(str(out / "model.pt"))
    torch.save(example, out / "example.pt")
    (out / "Dockerfile").write_text(TORCH_DOCKERFILE)
    (out / "server.py").write_text(TORCH_SERVER)
    (out / "wheels").mkdir(exist_ok=True)
    wheel = torch_wheel()
    # torch's dependencies as wheels too (pip download from the index, outside the image).
    sh(sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.11",
       "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
       "--platform", "manylinux2014_x86_64", "-d", str(out / "wheels"), str(wheel))
    return out


def gpu_without_gpu(image: str, watch: float = 15.0) -> str:
    """Start the GPU image on this machine (no GPU) and say what readiness did: it must never
    answer 200, since the CUDA provider cannot be active."""
    port = free_port()
    cid = docker("run", "--detach", "--network", "host", "--read-only", "--tmpfs", "/tmp",
                 "--env", "SERVEDMODEL_HOST=127.0.0.1", "--env", f"SERVEDMODEL_PORT={port}", image).stdout.strip()
    seen, t0 = set(), time.monotonic()
    try:
        while time.monotonic() - t0 < watch:
            seen.add(http_status(f"http://127.0.0.1:{port}/v2/health/ready", timeout=0.5))
            if 200 in seen or not inspect(cid, "{{json .State.Running}}"):
                break
            time.sleep(0.2)
        state = inspect(cid, "{{json .State}}")
        logs = docker("logs", cid, check=False)
        last = ((logs.stdout + logs.stderr).strip().splitlines() or [""])[-1][:160].replace("`", "'").replace("|", "/")
    finally:
        docker("rm", "--force", cid, check=False)
    verdict = "became ready (wrong)" if 200 in seen else "was never ready"
    how = (f"exited {state['ExitCode']}" if not state["Running"] else
           f"answered {sorted(seen - {0}) or 'nothing'} for {watch:.0f} s")
    return f"{verdict.replace('was never ready', 'never ready')}: {how}; last log line `{last}`"


# --- the run -----------------------------------------------------------------------------------
def preflight() -> list[str]:
    problems = []
    if shutil.which("docker") is None or docker("info", check=False).returncode:
        problems.append("no Docker engine (run .ci/prepare-docker.sh as root)")
    elif docker("image", "inspect", BASE_IMAGE, check=False).returncode:
        problems.append(f"no {BASE_IMAGE} in the engine (run .ci/prepare-docker.sh)")
    if http_status(f"http://{REGISTRY}/v2/") != 200:
        problems.append(f"no registry on {REGISTRY} (run .ci/prepare-docker.sh)")
    return problems


LAYERS_FILE = ROOT / "components" / "image_layers.json"


def runtime_layers(device: str, work: Path) -> dict:
    """Build mnist-mlp for `device`, push it, and sum the compressed sizes of every layer but the
    last (the model layer: `COPY model/` comes last) from the registry's manifest."""
    import servedmodel.models as models

    r = models.build(model="mnist-mlp", compression="none", out_dir=work / f"layers-{device}", device=device)
    repo = f"servedmodel-bench/layers-{device}"
    tag = f"{REGISTRY}/{repo}:{r.version}"
    build(Path(r.context_dir), tag)
    docker("push", tag)
    layers = [int(layer["size"]) for layer in registry_manifest(repo, r.version)["layers"]]
    return {"runtime_compressed_bytes": sum(layers[:-1]), "layers": len(layers),
            "how": "measured", "base_image": BASE_IMAGE,
            "measured": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/image.py --layers" + ("" if device == "cuda" else " --no-gpu")}


def write_layers(no_gpu: bool) -> int:
    data = json.loads(LAYERS_FILE.read_text()) if LAYERS_FILE.is_file() else {"devices": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-layers-"))
    try:
        for device in ("cpu",) + (() if no_gpu else ("cuda",)):
            # Hand-written keys of the old entry (a "note") stay; measured ones are replaced.
            data["devices"][device] = {**data["devices"].get(device, {}),
                                       **runtime_layers(device, work)}
            print(f"{device}: {data['devices'][device]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LAYERS_FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--layers", action="store_true",
                    help="only measure the runtime layers' compressed bytes into components/image_layers.json")
    ap.add_argument("--models", nargs="+", default=ZOO)
    ap.add_argument("--compressions", nargs="+", default=COMPRESSIONS)
    ap.add_argument("--runs", type=int, default=3, help="cold starts per image (median)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU image build")
    opts = ap.parse_args()

    problems = preflight()
    if problems:
        print("bench/image.py cannot run: " + "; ".join(problems), file=sys.stderr)
        return 2
    if opts.layers:
        return write_layers(opts.no_gpu)
    import servedmodel.models as models

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    run_id = str(int(time.time()))
    verdicts: list[tuple[str, bool, str]] = []
    notes: list[str] = []

    # 1. contexts
    built: dict[tuple[str, str], dict] = {}
    for m in opts.models:
        for c in opts.compressions:
            try:
                r = models.build(model=m, compression=c, out_dir=work / f"{m}-{c}", device="cpu")
                built[(m, c)] = {"context": Path(r.context_dir), "version": r.version,
                                 "tag": f"servedmodel-bench/{m}:{r.version}",
                                 "model_bytes": (Path(r.context_dir) / "model" / "model.onnx").stat().st_size}
            except Exception as e:  # a failed export is reported, not hidden
                notes.append(f"`{m}` / `{c}`: models.build failed: {str(e).splitlines()[0][:200]}")
    print(f"{len(built)} contexts built", flush=True)

    # 2. build times: cold (no cache at all), warm (unchanged context), model-only change
    ref = ("mnist-mlp", "none") if ("mnist-mlp", "none") in built else next(iter(built))
    alt = next((k for k in built if k[0] == ref[0] and k != ref), None)
    b = built[ref]
    cold = build(b["context"], b["tag"], "--no-cache")
    warm = build(b["context"], b["tag"])
    model_only = model_step_build(built[alt]["context"], built[alt]["tag"]) if alt else None
    print(f"build cold {cold:.1f}s warm {warm:.1f}s model-only {model_only}", flush=True)

    # 3. every image (the deps layer is shared), sizes
    for v in built.values():
        v["build_s"] = model_step_build(v["context"], v["tag"])
        v["size"] = image_size(v["tag"])
        v["model_layer"] = last_layer_size(v["tag"])

    # 4. push: version A, then a model-only change B of the same model
    push_rows = []
    for m in dict.fromkeys(k[0] for k in built):
        versions = [k for k in built if k[0] == m]
        if len(versions) < 2:
            continue
        a, bb = built[versions[0]], built[versions[1]]
        repo = f"servedmodel-bench/{m}-{run_id}"
        tallies = []
        for v in (a, bb):
            docker("tag", v["tag"], f"{REGISTRY}/{repo}:{v['version']}")
            tallies.append(push_tally(docker("push", f"{REGISTRY}/{repo}:{v['version']}").stdout))
        la = {layer["digest"]: layer["size"] for layer in registry_manifest(repo, a["version"])["layers"]}
        lb = registry_manifest(repo, bb["version"])["layers"]
        new = [layer for layer in lb if layer["digest"] not in la]
        only_model = len(new) == 1 and new[0]["digest"] == lb[-1]["digest"]
        push_rows.append((m, versions[0][1], versions[1][1], len(lb), len(new), sum(layer["size"] for layer in new),
                          tallies[1], only_model))
        verdicts.append((f"{m}: a model-only change ({versions[0][1]} -> {versions[1][1]}) pushes only the model layer",
                         only_model, f"{len(new)} new layer(s), {sum(layer['size'] for layer in new) / MB:.2f} MB"))
    print("push done", flush=True)

    # 5. cold start, serving images (compression none)
    starts = {}
    for m in opts.models:
        if (m, "none") in built:
            starts[m] = median_cold_start(built[(m, "none")]["tag"], opts.runs)
            print(f"cold start {m}: {starts[m]}", flush=True)
            if m in COLD_START_TARGETS:
                verdicts.append((f"{m}: cold start to ready <= {COLD_START_TARGETS[m]:.0f} s",
                                 starts[m][0] <= COLD_START_TARGETS[m], f"median {starts[m][0]:.2f} s"))

    # 6. the seed-style torch image, same models, same run
    torch_rows = []
    for m in [m for m in ("mnist-mlp", "minilm") if m in opts.models and (m, "none") in built]:
        try:
            ctx = torch_context(m, work / f"torch-{m}")
            tag = f"servedmodel-bench/torch-{m}:{built[(m, 'none')]['version']}"
            t = build(ctx, tag, "--no-cache")
            size = image_size(tag)
            cs = median_cold_start(tag, opts.runs)
            ours = built[(m, "none")]["size"]
            ratio = ours / size
            torch_rows.append((m, size, t, cs, ours, ratio))
            verdicts.append((f"{m}: serving image <= {SIZE_RATIO_TARGET:.0%} of the torch image",
                             ratio <= SIZE_RATIO_TARGET, f"{ours / MB:.0f} MB / {size / MB:.0f} MB = {ratio:.1%}"))
            print(f"torch {m}: {size / MB:.0f} MB, build {t:.0f}s, start {cs[0]:.2f}s", flush=True)
        except Exception as e:
            notes.append(f"torch image for `{m}` failed: {str(e).splitlines()[0][:300]}")

    # 7. the GPU image
    gpu = None
    if not opts.no_gpu:
        try:
            r = models.build(model=ref[0], compression="none", out_dir=work / "gpu", device="cuda")
            tag = f"servedmodel-bench/{ref[0]}-cuda:{r.version}"
            t = build(Path(r.context_dir), tag, "--no-cache")
            probe = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c",
                           "ldd /opt/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so"
                           " | grep 'not found' || true").stdout.split()
            missing = sorted({w for w in probe if w.endswith((".so", ".so.1")) or ".so." in w})
            refusal = gpu_without_gpu(tag)
            gpu = (tag, image_size(tag), t, missing, r.manifest.get("device"), refusal)
            print(f"gpu image {gpu}", flush=True)
        except Exception as e:
            notes.append(f"GPU image: {str(e).splitlines()[0][:300]}")

    # --- report ---------------------------------------------------------------------------------
    md = ["## Serving image (`bench/image.py`)", "",
          f"Measured {started} on {machine_line()}; Docker engine "
          f"{docker('version', '--format', '{{.Server.Version}}').stdout.strip()}, classic builder, "
          f"base `{BASE_IMAGE}` (the Debian stand-in that .ci/prepare-docker.sh builds: "
          f"{image_size(BASE_IMAGE) / MB:.0f} MB). Sizes are uncompressed image sizes as `docker images` shows them. "
          f"Load average at the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f} (timings, cold starts "
          f"above all, grow with other work on the machine).", ""]
    md += ["### Targets", "", "| target | result | measured |", "| --- | --- | --- |"]
    md += [f"| {name} | {'PASS' if ok else 'FAIL'} | {how} |" for name, ok, how in verdicts]
    torch_size = {row[0]: row[1] for row in torch_rows}
    md += ["", "### Image size per model and compression", "",
           "| model | compression | version | model.onnx | model layer | image | of the torch image "
           "| build of the model step |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (m, c), v in built.items():
        ratio = f"{v['size'] / torch_size[m]:.1%}" if m in torch_size else "-"
        md.append(f"| {m} | {c} | `{v['version']}` | {v['model_bytes'] / MB:.2f} MB | {v['model_layer'] / MB:.2f} MB "
                  f"| {v['size'] / MB:.0f} MB | {ratio} | {v['build_s']:.1f} s |")
    md += ["", "### Build time", "",
           f"`{ref[0]}` / `{ref[1]}`: cold (`--no-cache`: venv and wheels from the package index) "
           f"**{cold:.1f} s**; warm (unchanged context, every step cached) **{warm:.1f} s**"
           + (f"; a model-only change (`{alt[1]}`: everything cached but the model step) **{model_only:.1f} s**."
              if alt else "."), ""]
    if push_rows:
        md += ["### Push of a model-only change", "",
               "Version A pushed, then version B of the same model (another compression): layers of B that the "
               "registry did not have (from the manifests), and what `docker push` reported for B.", "",
               "| model | A -> B | layers in B | new layers | new bytes (compressed) | push of B "
               "| only the model layer |",
               "| --- | --- | ---: | ---: | ---: | --- | --- |"]
        for m, ca, cb, n, k, nb, tally, ok in push_rows:
            md.append(f"| {m} | {ca} -> {cb} | {n} | {k} | {nb / MB:.2f} MB | "
                      f"{tally['pushed']} pushed, {tally['already there']} already there, {tally['mounted']} mounted | "
                      f"{'yes' if ok else 'NO'} |")
    md += ["", "### Cold start (`docker run` -> `/v2/health/ready` 200)", "",
           f"Median of {opts.runs} runs, read-only root, all capabilities dropped.", "",
           "| model | serving image | runs |", "| --- | ---: | --- |"]
    for m, (med, ts) in starts.items():
        md.append(f"| {m} | {med:.2f} s | {', '.join(f'{t:.2f}' for t in ts)} |")
    if torch_rows:
        md += ["", "### Beside the seed-style torch image (same run)", "",
               "TorchScript of the same zoo model served by torch (CPU wheel from this machine's disk, "
               "its dependencies downloaded as wheels into the context beforehand, installed in a first stage) "
               "in the same base image, with a minimal stdlib HTTP server. Its build is cold (`--no-cache`) from "
               "those local wheels.", "",
               "| model | torch image | serving image | size ratio | torch build (cold) | torch cold start "
               "| serving cold start |",
               "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m, size, t, cs, ours, ratio in torch_rows:
            md.append(f"| {m} | {size / MB:.0f} MB | {ours / MB:.0f} MB | {ratio:.1%} | {t:.0f} s | {cs[0]:.2f} s | "
                      f"{starts[m][0]:.2f} s |")
    md += ["", "### GPU image (`Dockerfile.cuda`, onnxruntime-gpu + NVIDIA CUDA/cuDNN wheels)", ""]
    if gpu:
        tag, size, t, missing, device, refusal = gpu
        md.append(f"`{ref[0]}` built for `cuda` (manifest device `{device}`): **{size / MB:.0f} MB**, cold build "
                  f"(`--no-cache`: ~1.6 GB of wheels from the package index) **{t:.0f} s**. Libraries of the CUDA "
                  "provider that do not resolve inside the "
                  f"image: {', '.join(f'`{x}`' for x in missing) or 'none'} (libcuda.so.1 is the driver's, mounted "
                  f"by the NVIDIA container runtime). No GPU on this machine: GPU throughput is not measured here. "
                  f"Run here without a GPU, the GPU image {refusal}.")
        verdicts.append(("GPU image without a GPU never reports ready", "never ready" in refusal, refusal))
    else:
        md.append("Not built in this run" + (" (--no-gpu)." if opts.no_gpu else "."))
    if notes:
        md += ["", "### Notes", ""] + [f"- {n}" for n in notes]
    write_section("image", "\n".join(md))

    print()
    for name, ok, how in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {how}")
    for n in notes:
        print(f"NOTE  {n}")
    shutil.rmtree(work, ignore_errors=True)
    # The torch and GPU images are several GB each and only measured: give the disk back.
    big = [f"servedmodel-bench/torch-{row[0]}:{built[(row[0], 'none')]['version']}" for row in torch_rows]
    big += [gpu[0]] if gpu else []
    if big:
        docker("rmi", *big, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
