"""The GPU memory cap (SERVEDMODEL_GPU_MEM_LIMIT, docs/protocol.md "Settings"): read and
checked once with the other settings, turned into the CUDA provider's options by a pure
function, and those options as onnxruntime itself normalises and accepts them.

No GPU here: the CPU build of onnxruntime has no CUDA provider to run with the options (it is
never faked). What is tested without a device: the setting, the providers list, onnxruntime's
own validation of that list, and the check that the options were really taken."""
from __future__ import annotations

import subprocess
import sys
import warnings

import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

from contexts import write_context
from servedmodel.serving.errors import StartupError
from servedmodel.serving.manifest import load_manifest
from servedmodel.serving.model import CPU, CUDA, execution_providers, options_problem
from servedmodel.serving.settings import load_settings
from serverkit import ROOT


def run_server(context, env):
    cmd = [sys.executable, "-m", "serving", "--context", str(context), "--port", "0"]
    return subprocess.run(cmd, cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, timeout=60)


def _refuses(result, *words):
    """Exited non-zero with one line on stderr naming every word (as tests/serving/test_startup.py)."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]

GIB4 = 4 * 1024 ** 3


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(write_context(tmp_path_factory.mktemp("gpu") / "ctx", "mlp"))


def test_the_cap_is_read_in_bytes_for_a_cuda_server(manifest):
    assert load_settings(manifest, {}, {}).gpu_mem_limit is None
    env = {"SERVEDMODEL_DEVICE": "cuda", "SERVEDMODEL_GPU_MEM_LIMIT": str(GIB4)}
    assert load_settings(manifest, {}, env).gpu_mem_limit == GIB4
    # unset and empty are the same: no cap
    assert load_settings(manifest, {}, {"SERVEDMODEL_DEVICE": "cuda",
                                        "SERVEDMODEL_GPU_MEM_LIMIT": ""}).gpu_mem_limit is None


@pytest.mark.parametrize("value", ["4Gi", "0", "-1", "1.5", "4e9", "lots"])
def test_a_cap_that_is_not_positive_whole_bytes_is_refused(manifest, value):
    env = {"SERVEDMODEL_DEVICE": "cuda", "SERVEDMODEL_GPU_MEM_LIMIT": value}
    with pytest.raises(StartupError) as e:
        load_settings(manifest, {}, env)
    assert f"SERVEDMODEL_GPU_MEM_LIMIT={value!r} must be a positive integer number of bytes" \
        in str(e.value)


def test_a_cap_on_a_cpu_server_is_refused(manifest):
    """The manifest says cpu: a cap would cap nothing, so the deployment meant something else."""
    assert manifest.device == "cpu"
    with pytest.raises(StartupError, match="SERVEDMODEL_GPU_MEM_LIMIT=1048576 caps the CUDA "
                                           "provider's memory, but the device is 'cpu'"):
        load_settings(manifest, {}, {"SERVEDMODEL_GPU_MEM_LIMIT": "1048576"})


def test_the_server_refuses_a_bad_cap_at_start_with_one_line(tmp_path):
    ctx = write_context(tmp_path / "ctx", "mlp")
    result = run_server(ctx, {"SERVEDMODEL_DEVICE": "cuda", "SERVEDMODEL_GPU_MEM_LIMIT": "4Gi"})
    _refuses(result, "invalid settings", "SERVEDMODEL_GPU_MEM_LIMIT='4Gi'", "4294967296")
    assert result.returncode == 2


def test_providers_per_device_and_cap():
    assert execution_providers("cpu") == [CPU]
    assert execution_providers("cuda") == [(CUDA, {}), CPU]       # a whole GPU: ORT's defaults
    assert execution_providers("cuda", GIB4) == [
        (CUDA, {"gpu_mem_limit": "4294967296", "arena_extend_strategy": "kSameAsRequested"}), CPU]


def test_onnxruntime_accepts_the_providers_list_as_given():
    """onnxruntime's own check of a providers argument (what InferenceSession calls first),
    against the names of every provider this onnxruntime knows (CUDA among them, although the
    CPU build cannot run it): no warning, and the options reach it unchanged."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names, options = check_and_normalize_provider_args(
            execution_providers("cuda", GIB4), None, ort.get_all_providers())
    assert names == [CUDA, CPU]
    assert options == [{"gpu_mem_limit": "4294967296", "arena_extend_strategy": "kSameAsRequested"},
                       {}]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_a_session_made_with_the_cap_on_a_cpu_build_runs_on_cpu_only(tmp_path):
    """What the server guards against: onnxruntime accepts the list, warns and falls back to
    the CPU, so a server asked for cuda must refuse (serving/model.py; test_startup.py)."""
    ctx = write_context(tmp_path / "ctx", "mlp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = ort.InferenceSession(str(ctx / "model" / "model.onnx"),
                                       providers=execution_providers("cuda", GIB4))
    assert session.get_providers() == [CPU]
    assert any(CUDA in str(w.message) for w in caught)
    assert options_problem(execution_providers("cuda", GIB4), session.get_provider_options()) \
        == (f"{CUDA} runs with {{'gpu_mem_limit': None, 'arena_extend_strategy': None}}, not the "
            "{'gpu_mem_limit': '4294967296', 'arena_extend_strategy': 'kSameAsRequested'} asked "
            "for (SERVEDMODEL_GPU_MEM_LIMIT)")


def test_options_in_force_are_checked_against_those_asked_for():
    wanted = execution_providers("cuda", GIB4)
    # the shape get_provider_options() reports: every option of the provider, as strings
    taken = {CUDA: {"device_id": "0", "gpu_mem_limit": "4294967296",
                    "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "EXHAUSTIVE"},
             CPU: {}}
    assert options_problem(wanted, taken) is None
    defaults = dict(taken[CUDA], gpu_mem_limit="18446744073709551615",
                    arena_extend_strategy="kNextPowerOfTwo")
    problem = options_problem(wanted, {CUDA: defaults, CPU: {}})
    assert problem is not None and "18446744073709551615" in problem and "kNextPowerOfTwo" in problem
    assert options_problem(execution_providers("cuda"), {CUDA: defaults}) is None   # nothing asked


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_a_capped_cuda_server_without_cuda_still_refuses(tmp_path):
    ctx = write_context(tmp_path / "ctx", "mlp")
    _refuses(run_server(ctx, {"SERVEDMODEL_DEVICE": "cuda", "SERVEDMODEL_GPU_MEM_LIMIT": str(GIB4)}),
             "device=cuda", "CUDAExecutionProvider")
