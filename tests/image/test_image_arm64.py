"""linux/arm64 images from the real context (issue 22), for real, under QEMU user emulation
(.ci/prepare-arm64.sh): the context and Dockerfile that build the x86-64 image build for arm64
unchanged (only the base differs, by build arg, because the classic builder here keeps one
image per name); onnxruntime and numpy come from their aarch64 wheels, installed by pip inside
the emulated build; the container serves, and answers like the x86-64 image within the model's
parity tolerance (the manifest's); and a manifest list of both platforms is pushed to the
registry on 127.0.0.1:5000 and pulled back by digest for each platform.

Emulated timings are not arm64 speed: nothing here is timed against a target.
"""
from __future__ import annotations

import json
import re
import urllib.request
import uuid

import numpy as np
import pytest

from imagekit import SESSION, Container, docker, infer_binary, inspect, sample_inputs

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.arm64]

#: mnist-mlp in fp32 and one int8 model (conv + quantized kernels, which differ most by CPU).
MODELS = [("mnist-mlp", "none"), ("lenet", "int8")]
#: Start-up under emulation is ~10x slower than native and shares 2 cores with the rest.
ARM64_READY_SECONDS = 300
LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"


def infer(port: int, manifest: dict, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference with binary tensors, every output present (emulated: a longer timeout)."""
    result = infer_binary(port, manifest, inputs, timeout=120)
    assert set(result) == {o["name"] for o in manifest["outputs"]}, sorted(result)
    return result


def parity_problems(got: np.ndarray, want: np.ndarray, tolerance: dict, batched: bool) -> list[str]:
    """`got` against `want` by the manifest's parity tolerance for that output (what the build
    held the ONNX model to against torch): atol/rtol where set, else the row cosine and the
    top-1 agreement floors (int8). Raises if the record names no criterion at all."""
    problems = []
    g, w = got.astype(np.float64), want.astype(np.float64)
    criteria = 0
    if tolerance.get("atol") is not None:
        criteria += 1
        bound = tolerance["atol"] + tolerance["rtol"] * np.abs(w)
        if not np.all(np.abs(g - w) <= bound):
            problems.append(f"max abs diff {np.abs(g - w).max():.3g} > atol {tolerance['atol']} "
                            f"+ rtol {tolerance['rtol']}*|x86|")
    rows = g.shape[0] if batched else 1
    g2, w2 = g.reshape(rows, -1), w.reshape(rows, -1)
    if tolerance.get("min_cosine") is not None:
        criteria += 1
        cos = (g2 * w2).sum(1) / np.maximum(np.linalg.norm(g2, axis=1) * np.linalg.norm(w2, axis=1), 1e-30)
        if cos.min() < tolerance["min_cosine"]:
            problems.append(f"min row cosine {cos.min():.5f} < {tolerance['min_cosine']}")
    if tolerance.get("min_top1_agreement") is not None:
        criteria += 1
        agree = float((g2.argmax(1) == w2.argmax(1)).mean())
        if agree < tolerance["min_top1_agreement"]:
            problems.append(f"top-1 agreement {agree:.3f} < {tolerance['min_top1_agreement']}")
    assert criteria, f"the manifest's parity record names no tolerance: {tolerance}"
    return problems


def test_parity_check_fails_outside_the_tolerance():
    """The check the arm64 tests rely on refuses what it must (so they can fail)."""
    want = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    fp32 = {"atol": 1e-4, "rtol": 1e-3}
    assert parity_problems(want + 1e-5, want, fp32, True) == []
    assert parity_problems(want + 1e-2, want, fp32, True)
    int8 = {"atol": None, "rtol": 0.0, "min_cosine": 0.98, "min_top1_agreement": 0.9}
    assert parity_problems(want * 1.01, want, int8, True) == []
    assert parity_problems(want[::-1], want, int8, True)          # rows swapped: argmax differs
    with pytest.raises(AssertionError):
        parity_problems(want, want, {"atol": None, "rtol": 0.0}, True)


@pytest.mark.parametrize("model,compression", MODELS)
def test_arm64_image_serves_under_emulation_like_the_x86_image(images, arm64_engine, model, compression):
    x86 = images.get(model, compression)
    arm = images.get_arm64(model, compression)
    assert arm.context == x86.context and arm.version == x86.version     # one context, one version
    assert inspect(x86.image, "{{json .Architecture}}") == "amd64"
    assert inspect(arm.image, "{{json .Os}}") == "linux" and inspect(arm.image, "{{json .Architecture}}") == "arm64"
    # The runtime in the arm64 image is the aarch64 build of exactly the pinned versions.
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (arm.context / "requirements.txt").read_text(), re.M))
    probe = docker("run", "--rm", "--network", "host", "--platform", "linux/arm64", "--entrypoint", "python3",
                   arm.image, "-c", "import json, platform, numpy, onnxruntime; print(json.dumps([platform.machine(), "
                   "numpy.__version__, onnxruntime.__version__, onnxruntime.get_available_providers()]))",
                   timeout=300)
    machine, numpy_version, ort_version, providers = json.loads(probe.stdout.strip().splitlines()[-1])
    assert machine == "aarch64"
    assert (numpy_version, ort_version) == (pins["numpy"], pins["onnxruntime"])
    assert "CPUExecutionProvider" in providers

    manifest = x86.manifest
    inputs = sample_inputs(manifest, batch=8)
    arm_c = x86_c = None
    try:
        arm_c = Container(arm.image, platform="linux/arm64")
        arm_ready = arm_c.wait_ready(timeout=ARM64_READY_SECONDS)
        x86_c = Container(x86.image)             # one after the other: each start timed alone
        x86_ready = x86_c.wait_ready()
        got, want = infer(arm_c.port, manifest, inputs), infer(x86_c.port, manifest, inputs)
        # The arm64 server says what it runs on, in its own start line.
        log = docker("logs", arm_c.id).stdout
        started = json.loads(next(line for line in log.splitlines() if '"event": "starting"' in line))
        assert started["providers"] == ["CPUExecutionProvider"]
    finally:
        for c in (arm_c, x86_c):
            if c is not None:
                c.remove()
    batched = manifest["batching"]["max_batch_size"] > 0
    problems = []
    for spec in manifest["outputs"]:
        g, w = got[spec["name"]], want[spec["name"]]
        assert g.shape == w.shape and g.dtype == w.dtype, (spec["name"], g.shape, w.shape)
        problems += [f"{spec['name']}: {p}" for p in
                     parity_problems(g, w, manifest["parity"]["outputs"][spec["name"]], batched)]
        print(f"{model}/{compression} {spec['name']}: arm64 vs x86-64 max abs diff "
              f"{np.abs(g.astype(np.float64) - w).max():.3g}, top-1 equal "
              f"{float((g.reshape(len(g), -1).argmax(1) == w.reshape(len(w), -1).argmax(1)).mean()):.3f}")
    print(f"{model}/{compression}: arm64 image built in {arm.build_seconds:.0f} s, "
          f"ready in {arm_ready:.1f} s under emulation (x86-64: {x86_ready:.1f} s)")
    assert not problems, f"{model}/{compression}: arm64 differs from x86-64 beyond the manifest's tolerance: {problems}"


def test_multiarch_manifest_list_is_pushed_and_pulled_by_digest_per_platform(images, arm64_engine, registry):
    """Both images of one version under one tag, as a manifest list (what docker-build's
    `platforms` pushes): `docker manifest create/push` here, where the engine has no buildx.
    Pulled by the list's digest, each platform gets its own image, and it runs."""
    built = {"amd64": images.get("mnist-mlp"), "arm64": images.get_arm64("mnist-mlp")}
    name = f"servedmodel-test/multiarch-{SESSION}-{uuid.uuid4().hex[:6]}"
    repo = f"{registry}/{name}"
    version = built["amd64"].version
    per_arch = {arch: f"{repo}:{version}-{arch}" for arch in built}
    list_ref = f"{repo}:{version}"
    pulled: list[str] = []
    try:
        pushed = {}
        for arch, b in built.items():
            docker("tag", b.image, per_arch[arch])
            out = docker("push", per_arch[arch]).stdout
            pushed[arch] = re.findall(r"digest: (sha256:[0-9a-f]{64})", out)[0]
        docker("manifest", "create", "--insecure", "--amend", list_ref, *per_arch.values())
        list_digest = docker("manifest", "push", "--insecure", "--purge", list_ref).stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", list_digest), list_digest

        # What the registry holds under the version tag: a list of exactly the two pushes.
        req = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{version}",
                                     headers={"Accept": LIST_TYPE})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Docker-Content-Digest"] == list_digest
            listed = json.load(resp)
        assert listed["mediaType"] == LIST_TYPE
        assert {m["platform"]["architecture"]: m["digest"] for m in listed["manifests"]} == pushed
        assert all(m["platform"]["os"] == "linux" for m in listed["manifests"])

        # Pulled by digest (what the workload is given), per platform, with no local copy left.
        for ref in per_arch.values():
            docker("rmi", ref)
        pinned = f"{repo}@{list_digest}"
        for arch, machine in (("arm64", "aarch64"), ("amd64", "x86_64")):
            # The engine keeps one image per digest reference: the other platform's goes first.
            docker("rmi", pinned, check=False)
            docker("pull", "--platform", f"linux/{arch}", pinned, timeout=600)
            pulled.append(pinned)
            assert inspect(pinned, "{{json .Architecture}}") == arch
            assert inspect(pinned, "{{json .Id}}") == built[arch].image_id     # the very image built
            ran = docker("run", "--rm", "--network", "host", "--platform", f"linux/{arch}", "--entrypoint",
                         "python3", pinned, "-c", "import platform, onnxruntime; print(platform.machine())",
                         timeout=300)
            assert ran.stdout.strip().splitlines()[-1] == machine
    finally:
        for ref in [*per_arch.values(), *pulled]:
            docker("rmi", ref, check=False)
        docker("manifest", "rm", list_ref, check=False)
