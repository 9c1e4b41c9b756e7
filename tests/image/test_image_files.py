"""The image's files without an engine: the Dockerfiles keep the contract of
docs/architecture.md, the GPU requirements stay in step with the CPU ones, and the GPU image's
Python dependencies resolve for its platform (nothing here has a GPU, so this is what CI can
prove about the GPU image; bench/image.py builds it in full)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "models" / "image"
DOCKERFILES = [IMAGE / "Dockerfile", IMAGE / "Dockerfile.cuda"]


def instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned with =="
            out[name.split("[", 1)[0].lower()] = version   # extras do not change the pin
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_keeps_the_contract(path):
    lines = instructions(path)
    assert lines[0].startswith("ARG BASE_IMAGE=python:3.11-slim")
    # A `# syntax=` line would make BuildKit pull a frontend image from a public registry.
    assert not path.read_text().startswith("# syntax")
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE} AS deps", "FROM ${BASE_IMAGE}"], "multi-stage on BASE_IMAGE"
    final = lines[lines.index("FROM ${BASE_IMAGE}"):]
    assert "USER 10001:10001" in final
    assert "EXPOSE 8080" in final
    assert any(line.startswith("HEALTHCHECK ") and "/v2/health/ready" in line for line in final)
    assert any("useradd --uid 10001" in line for line in final)
    env = " ".join(line for line in final if line.startswith("ENV "))
    for var in ("SERVEDMODEL_CONTEXT=/app", "SERVEDMODEL_HOST=0.0.0.0", "SERVEDMODEL_PORT=8080"):
        assert var in env
    # Dependencies before code, the model last: a new model version rebuilds one step.
    assert final[-1] == "COPY model/ /app/model/"
    order = [next(i for i, line in enumerate(final) if line.startswith(p))
             for p in ("COPY --from=deps", "COPY serving/", "COPY model/")]
    assert order == sorted(order)
    assert not any("torch" in line for line in lines if not line.startswith("#"))
    # Only python3 through PATH: the upstream image has it in /usr/local/bin, Debian in /usr/bin.
    assert "/usr/local/bin/python" not in path.read_text() and "/usr/bin/python" not in path.read_text()


def test_cuda_dockerfile_differs_only_where_the_gpu_needs_it():
    cpu, gpu = instructions(DOCKERFILES[0]), instructions(DOCKERFILES[1])
    def tail(ls):
        return ls[ls.index("FROM ${BASE_IMAGE}"):]

    extra = [line for line in tail(gpu) if line not in tail(cpu)]
    missing = [line for line in tail(cpu) if line not in tail(gpu)]
    assert [line.split()[0] for line in extra] == ["ENV", "RUN"], extra
    assert "NVIDIA_VISIBLE_DEVICES=all" in extra[0] and "ldconfig" in extra[1]
    assert [line.split()[0] for line in missing] == ["ENV"], missing


def test_dockerignore_sends_only_what_the_dockerfile_copies():
    lines = [line for line in (IMAGE / "dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!requirements.txt", "!serving/", "!model/"} <= set(lines)
    assert "**/__pycache__" in lines


def test_cuda_requirements_are_the_cpu_server_stack_with_onnxruntime_gpu():
    cpu = pins(ROOT / "serving" / "requirements.txt")
    gpu = pins(ROOT / "serving" / "requirements-cuda.txt")
    assert gpu.get("onnxruntime-gpu") == cpu["onnxruntime"], "same onnxruntime release on CPU and GPU"
    assert "onnxruntime" not in gpu, "onnxruntime and onnxruntime-gpu must not be installed together"
    for name, version in cpu.items():
        if name != "onnxruntime":
            assert gpu.get(name) == version, f"{name}=={version} differs in requirements-cuda.txt"
    assert not any(n == "torch" or n.startswith("torch") for n in {**cpu, **gpu})
    assert any(n.startswith("nvidia-cudnn") for n in gpu) and "nvidia-cuda-runtime" in gpu


# The image's platform: python:3.11-slim on linux x86_64 (bookworm: glibc 2.36). pip takes
# explicit --platform tags literally, so every manylinux tag the image accepts is listed.
IMAGE_PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(36, 4, -1)] + \
    ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


#: The CPU image's platforms (issue 22: one manifest list, linux/amd64 and linux/arm64), as the
#: manylinux tags a bookworm (glibc 2.36) python:3.11-slim accepts on each.
CPU_IMAGE_PLATFORMS = {
    "linux/amd64": IMAGE_PLATFORMS,
    "linux/arm64": [f"manylinux_2_{m}_aarch64" for m in range(36, 16, -1)]
    + ["manylinux2014_aarch64", "linux_aarch64"],
}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_names_no_architecture(path):
    """One file for every platform: nothing in it depends on the CPU it is built for (the
    builder's --platform and the base image's manifest list choose the architecture)."""
    for line in instructions(path):
        assert not re.search(r"amd64|x86[_-]64|arm64|aarch64|TARGET(ARCH|PLATFORM|VARIANT)|--platform",
                             line, re.I), line


@pytest.mark.slow
@pytest.mark.parametrize("platform", CPU_IMAGE_PLATFORMS)
def test_cpu_image_dependencies_resolve_for_each_platform(tmp_path, platform):
    """pip resolves requirements.txt, wheels only, for CPython 3.11 on each platform of the
    manifest list, exactly at the pinned versions (onnxruntime and numpy from their aarch64
    wheels on arm64): a pin without a wheel for one platform fails here, before any emulated
    build (needs the package index)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--report", str(report), "--only-binary=:all:", "--python-version", "3.11",
           "--implementation", "cp", "--abi", "cp311", "--target", str(tmp_path / "t"),
           "-r", str(ROOT / "serving" / "requirements.txt")]
    for tag in CPU_IMAGE_PLATFORMS[platform]:
        cmd += ["--platform", tag]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    installs = json.loads(report.read_text())["install"]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    for name, version in pins(ROOT / "serving" / "requirements.txt").items():
        assert resolved.get(name) == version, f"{platform} {name}: pinned {version}, resolved {resolved.get(name)}"
    arch = platform.split("/")[1].replace("amd64", "x86_64").replace("arm64", "aarch64")
    for name in ("numpy", "onnxruntime"):
        wheel = next(i["download_info"]["url"] for i in installs if i["metadata"]["name"].lower() == name)
        assert wheel.endswith(f"_{arch}.whl"), f"{platform}: {name} from {wheel.rsplit('/', 1)[-1]}"
    assert all(i["download_info"]["url"].endswith(".whl") for i in installs), "wheels only"


@pytest.mark.slow
def test_gpu_image_dependencies_resolve_for_the_image_platform(tmp_path):
    """pip resolves requirements-cuda.txt, wheels only, for CPython 3.11 on linux x86_64,
    exactly at the pinned versions, and pulls in no torch (needs the package index)."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--report", str(report), "--only-binary=:all:", "--python-version", "3.11",
           "--implementation", "cp", "--abi", "cp311", "--target", str(tmp_path / "t"),
           "-r", str(ROOT / "serving" / "requirements-cuda.txt")]
    for p in IMAGE_PLATFORMS:
        cmd += ["--platform", p]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    for name, version in pins(ROOT / "serving" / "requirements-cuda.txt").items():
        assert resolved.get(name) == version, f"{name}: pinned {version}, resolved {resolved.get(name)}"
    assert not any(n.startswith("torch") for n in resolved)
    assert all(i["download_info"]["url"].endswith(".whl")
               for i in json.loads(report.read_text())["install"]), "wheels only: no compiler in the image"
