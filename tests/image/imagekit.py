"""Helpers for the image tests (tests/image/): a real Docker engine, a real registry on 127.0.0.1:5000, and
build contexts written by the real `models.build`. conftest.py holds the fixtures.

.ci/prepare-docker.sh provides the engine, the registry and a stand-in for the Dockerfile's
base image before `make test`. Where no engine exists the tests skip with the reason; in CI
(CI=true) a missing engine or registry is an error, because CI must have prepared them.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import tritonclient.http as httpclient

REGISTRY = "127.0.0.1:5000"
BASE_IMAGE = "python:3.11-slim"
#: The arm64 stand-in .ci/prepare-arm64.sh builds: the classic builder keeps one image per name,
#: so the arm64 base has its own (tests/test_repository.py keeps it in step with the script).
ARM64_BASE_IMAGE = "servedmodel-ci/python:3.11-slim-arm64"
#: Platform -> the BASE_IMAGE build arg for it here; None: the Dockerfile's default.
BASE_FOR_PLATFORM = {"linux/amd64": None, "linux/arm64": ARM64_BASE_IMAGE}
#: The kernel's handler for aarch64 binaries (binfmt_misc), registered by .ci/prepare-arm64.sh.
ARM64_HANDLER = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
REPO = "servedmodel-test"          # local image names: servedmodel-test/<model>:<version>
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# A label per test session gives this session's images their own ids (the layers, and so the
# cache, are shared): removing an image in one test cannot pull it from under another user of
# the same engine, and nobody else's container can pin it.
SESSION = uuid.uuid4().hex[:12]


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI runs .ci/prepare-docker.sh first; see its log)", pytrace=False)
    pytest.skip(reason)


def docker(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the docker CLI; on failure the error names the command and shows its output."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def inspect(obj: str, fmt: str = "{{json .}}") -> Any:  # the JSON docker prints
    return json.loads(docker("inspect", "--format", fmt, obj).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@dataclass(frozen=True)
class Built:
    """One zoo model's context and the image built from it."""
    model: str
    compression: str
    context: Path
    version: str
    manifest: dict
    image: str          # servedmodel-test/<model>:<version>
    image_id: str
    build_log: str
    build_seconds: float


def build_image(context: Path, tag: str, platform: str | None = None) -> tuple[str, str, float]:
    """`docker build` of a context as the components build it (its own Dockerfile, the default
    BASE_IMAGE); host network, because the engine here has no bridge; the session label (a
    config-only last step). With a platform: `--platform` and that platform's base here
    (BASE_FOR_PLATFORM); the context is the same. Returns id, log, seconds."""
    extra: list[str] = []
    if platform is not None:
        extra = ["--platform", platform]
        if BASE_FOR_PLATFORM[platform] is not None:
            extra += ["--build-arg", f"BASE_IMAGE={BASE_FOR_PLATFORM[platform]}"]
    t0 = time.monotonic()
    proc = docker("build", "--network", "host", "--label", f"org.servedmodel.test.session={SESSION}",
                  *extra, "--tag", tag, str(context), timeout=1800)
    seconds = time.monotonic() - t0
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip(), \
        proc.stdout + proc.stderr, seconds


class Images:
    """Builds each (model, compression) once per session from a real models.build context, for
    the engine's own platform (`get`) and, from the same context, for linux/arm64 (`get_arm64`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[tuple[str, str, str], Built] = {}

    def get(self, model: str, compression: str = "none") -> Built:
        key = (model, compression, "native")
        if key not in self._built:
            import servedmodel.models as models  # here, not at import: the image tests collect without torch too

            result = models.build(model=model, compression=compression,
                                  out_dir=self.root / f"{model}-{compression}", device="cpu")
            tag = f"{REPO}/{model}:{result.version}"
            image_id, log, seconds = build_image(result.context_dir, tag)
            self._built[key] = Built(model, compression, Path(result.context_dir), result.version,
                                     result.manifest, tag, image_id, log, seconds)
        return self._built[key]

    def get_arm64(self, model: str, compression: str = "none") -> Built:
        """The linux/arm64 image of the very context `get` built (tag `<version>-arm64`)."""
        key = (model, compression, "linux/arm64")
        if key not in self._built:
            native = self.get(model, compression)
            tag = f"{native.image}-arm64"
            image_id, log, seconds = build_image(native.context, tag, "linux/arm64")
            self._built[key] = Built(model, compression, native.context, native.version,
                                     native.manifest, tag, image_id, log, seconds)
        return self._built[key]


class Container:
    """A serving container started the way a careful operator runs it: read-only root,
    tmpfs /tmp, every capability dropped, no new privileges, the image's own user."""

    def __init__(self, image: str, *extra: str, env: dict[str, str] | None = None,
                 platform: str | None = None) -> None:
        self.port = free_port()
        env = {"SERVEDMODEL_HOST": "127.0.0.1", "SERVEDMODEL_PORT": str(self.port), **(env or {})}
        args = ["run", "--detach", "--network", "host", "--read-only",
                "--tmpfs", "/tmp:rw,noexec,nosuid,size=64m", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges"]
        if platform is not None:
            args += ["--platform", platform]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        self.started = time.monotonic()
        self.id = docker(*args, *extra, image).stdout.strip()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from `docker run` to /v2/health/ready answering 200."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if http_status(f"{self.url}/v2/health/ready", timeout=1) == 200:
                return time.monotonic() - self.started
            if not inspect(self.id, "{{json .State.Running}}"):
                break
            time.sleep(0.05)
        raise AssertionError(f"not ready after {time.monotonic() - self.started:.1f}s; logs:\n"
                             f"{self.logs()}")

    def logs(self) -> str:
        proc = docker("logs", self.id, check=False)
        return (proc.stdout + proc.stderr)[-4000:]

    def remove(self) -> None:
        docker("rm", "--force", self.id, check=False)


NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
      "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def sample_inputs(manifest: dict, batch: int = 2, seq: int = 8) -> dict[str, np.ndarray]:
    """A deterministic request for any manifest: batch on dim 0, `seq` for other dynamic dims;
    token-like inputs get small ids, masks ones, token types zeros."""
    rng = np.random.default_rng(7)
    out = {}
    for spec in manifest["inputs"]:
        shape = [batch if (i == 0 and manifest["batching"]["max_batch_size"] > 0) else
                 (seq if d == -1 else d) for i, d in enumerate(spec["shape"])]
        dtype = NP[spec["datatype"]]
        name = spec["name"].lower()
        if np.issubdtype(dtype, np.integer):
            if "mask" in name:
                arr = np.ones(shape, dtype)
            elif "type" in name:
                arr = np.zeros(shape, dtype)
            else:
                arr = rng.integers(1, 1000, size=shape).astype(dtype)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        out[spec["name"]] = arr
    return out


def infer_binary(port: int, manifest: dict, inputs: dict[str, np.ndarray],
                 timeout: float = 60) -> dict[str, np.ndarray]:
    """One inference through tritonclient.http with binary tensors: each output by name (an
    output the server left out is missing from the result)."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=timeout)
    req = []
    for spec in manifest["inputs"]:
        arr = inputs[spec["name"]]
        i = httpclient.InferInput(spec["name"], list(arr.shape), spec["datatype"])
        i.set_data_from_numpy(arr, binary_data=True)
        req.append(i)
    outs = [httpclient.InferRequestedOutput(o["name"], binary_data=True) for o in manifest["outputs"]]
    result = client.infer(manifest["name"], req, outputs=outs)
    answers = {o["name"]: result.as_numpy(o["name"]) for o in manifest["outputs"]}
    return {name: np.asarray(a) for name, a in answers.items() if a is not None}
