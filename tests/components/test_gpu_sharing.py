"""Issue 22: small GPU models sharing a time-sliced GPU (`servedmodel:gpuShare`), each capped in
GPU memory (`servedmodel:gpuMemory` -> SERVEDMODEL_GPU_MEM_LIMIT).

No GPU here: the declared objects are validated strictly (Kubernetes OpenAPI, Karpenter's CRDs),
the capacity arithmetic is checked against EC2's recorded figures (22888 MiB for an A10G or L4,
not 24 GiB), and the environment the server gets is read from the Deployment.
"""
from __future__ import annotations

import base64
import math

import kubernetes_validate
import pulumi
import pytest

import servedmodel.models as models
from lifecycle_model import plan
from pulumi_harness import (
    EC2_INSTANCE_TYPES,
    KUBERNETES_VERSION,
    TEST_SECRET,
    kubernetes_manifest,
    run_program,
    variant_run,
)
from servedmodel.components import capacity, coldstart, gpus, specs
from servedmodel.components.args import ArgsError, ResourcesArgs
from servedmodel.components.settings import ConfigError, parse_settings
from test_platforms import recorded
from test_settings import raw_for
from tests.crds.validate import validate_custom_resource

SECRETS = {"servedmodel:authToken": TEST_SECRET}
# prod's resnet on a quarter of a g5.xlarge's A10G: small CPU and memory requests so four fit a node.
SHARED = {"servedmodel:gpuShare": 4, "servedmodel:gpuMemory": "4Gi", "servedmodel:cpu": "500m",
          "servedmodel:memory": "2Gi", "servedmodel:nodeMax": 3}
GPU_MEM_ENV = "SERVEDMODEL_GPU_MEM_LIMIT"


def a10g_mib() -> int:
    [gpu] = EC2_INSTANCE_TYPES["g5.xlarge"]["describeInstanceTypes"]["gpuses"]
    return gpu["memorySize"]


def env_of(run) -> dict[str, str]:
    [workload] = [r for r in run.resources if r.type in ("kubernetes:apps/v1:Deployment",
                                                         "kubernetes:argoproj.io/v1alpha1:Rollout")]
    [c] = workload.inputs["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in c["env"]}


def pod_of(run) -> dict:
    [workload] = [r for r in run.resources if r.type in ("kubernetes:apps/v1:Deployment",
                                                         "kubernetes:argoproj.io/v1alpha1:Rollout")]
    return workload.inputs["spec"]["template"]["spec"]


def settings_problems(stack: str, overrides: dict, ec2=recorded) -> list[str]:
    raw, secrets = raw_for(stack, overrides, SECRETS)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets, ec2=ec2)
    return err.value.problems


# ---- the facts -----------------------------------------------------------------------------------

def test_the_labels_are_the_device_plugins():
    """NVIDIA/k8s-device-plugin v0.20.0: GFD writes `<resource>.replicas` and
    `<resource>.sharing-strategy` (internal/lm/resource.go), the config manager reads
    `nvidia.com/device-plugin.config` (cmd/config-manager/main.go)."""
    assert gpus.shared_node_labels(4) == {"nvidia.com/gpu.replicas": "4",
                                          "nvidia.com/gpu.sharing-strategy": "time-slicing",
                                          "nvidia.com/device-plugin.config": "time-slicing-4"}
    assert gpus.shared_selector(4).items() <= gpus.shared_node_labels(4).items()
    assert "nvidia.com/device-plugin.config" not in gpus.shared_selector(4)


def test_bottlerocket_settings_time_slice_without_renaming():
    text = gpus.bottlerocket_time_slicing_settings(3)
    lines = text.splitlines()
    assert "[settings.kubelet-device-plugins.nvidia]" in lines
    assert 'device-sharing-strategy = "time-slicing"' in lines
    assert "[settings.kubelet-device-plugins.nvidia.time-slicing]" in lines
    # Bottlerocket renames by default (nvidia.com/gpu.shared), which Karpenter cannot provision for.
    assert {"replicas = 3", "rename-by-default = false", "fail-requests-greater-than-one = true"} <= set(lines)


@pytest.mark.parametrize("peak_mib", [0, 10, 170, 171, 1000, 3000])
def test_the_default_cap_is_the_peak_with_headroom_in_whole_steps(peak_mib):
    cap = gpus.default_gpu_memory_bytes(peak_mib * gpus.MIB)
    mib = cap // gpus.MIB
    assert cap % (gpus.GPU_MEMORY_STEP_MIB * gpus.MIB) == 0
    assert mib >= gpus.GPU_MEMORY_FLOOR_MIB and mib >= peak_mib * gpus.GPU_MEMORY_HEADROOM
    assert mib - gpus.GPU_MEMORY_STEP_MIB < max(gpus.GPU_MEMORY_FLOOR_MIB, peak_mib * gpus.GPU_MEMORY_HEADROOM)


def test_the_warm_up_takes_turns_on_a_shared_gpu():
    startup = {"load_seconds": 1.5, "warmup_seconds": 2.0}
    whole = coldstart.start_seconds("cuda", startup)
    assert coldstart.start_seconds("cuda", startup, 4) - whole == pytest.approx(2.0 * 3)
    assert coldstart.start_seconds("cpu", startup, 4) == coldstart.start_seconds("cpu", startup)


# ---- the args --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    ({"gpu": 2, "gpu_share": 4}, "resources.gpu_share = 4: a shared GPU is handed out one share per replica"),
    ({"gpu": 0, "gpu_share": 4}, "resources.gpu_share = 4: a shared GPU is handed out one share per replica"),
    ({"gpu": 0, "gpu_memory": "4Gi"}, "resources.gpu_memory = '4Gi': caps the CUDA provider's memory"),
    ({"gpu": 1, "gpu_memory": "4G1"}, "resources.gpu_memory = '4G1': a memory quantity"),
    ({"gpu": 1, "gpu_memory": "500m"}, "resources.gpu_memory = '500m': a memory quantity"),
    ({"gpu": 1, "gpu_share": 0}, "resources.gpu_share = 0: must be 1 or more"),
])
def test_bad_sharing_args_name_the_field(kwargs, needle):
    with pytest.raises(ArgsError) as err:
        ResourcesArgs(**kwargs)
    assert needle in str(err.value)


def test_the_cap_in_bytes():
    assert ResourcesArgs(gpu=1, gpu_memory="4Gi").gpu_memory_bytes == 4 * 2**30
    assert ResourcesArgs(gpu=1, gpu_memory="1536Mi").gpu_memory_bytes == 1536 * 2**20
    assert ResourcesArgs(gpu=1).gpu_memory_bytes is None
    assert ResourcesArgs(gpu=1, gpu_share=4).shared and not ResourcesArgs(gpu=1).shared


# ---- capacity: EC2's GPU memory and the replicated nvidia.com/gpu ------------------------------------

def _fit(overrides):
    raw, secrets = raw_for("prod", {**SHARED, **overrides}, SECRETS)
    args = parse_settings(raw, secrets).served[0]
    return args, recorded(args.pool_instance_types)


@pytest.mark.parametrize("share, cap_mib", [(4, 4096), (4, 5210), (4, 5211), (5, 4096), (5, 4065), (2, 10932),
                                            (2, 10933), (1, 22376), (1, 22377)])
def test_shares_caps_and_contexts_must_fit_the_gpu_ec2_describes(share, cap_mib):
    args, types = _fit({"servedmodel:gpuShare": share, "servedmodel:gpuMemory": f"{cap_mib}Mi",
                        "servedmodel:nodeMax": 11})
    found = capacity.gpu_memory_problems(args, types, args.resources.gpu_memory_bytes)
    fits = share * (cap_mib + gpus.CUDA_CONTEXT_MIB) <= a10g_mib()
    assert (found == []) == fits
    if not fits:
        [p] = found
        most = a10g_mib() // share - gpus.CUDA_CONTEXT_MIB
        assert p.render() == (
            f"resources.gpu_memory = '{cap_mib}Mi': {share} share(s) per GPU (resources.gpu_share) x ({cap_mib}Mi cap "
            f"+ {gpus.CUDA_CONTEXT_MIB}Mi CUDA context) = {share * (cap_mib + gpus.CUDA_CONTEXT_MIB)}Mi "
            "does not fit one "
            f"GPU of g5.xlarge ({a10g_mib()}Mi, EC2's figure); cap each replica at {most}Mi or less, or lower "
            "resources.gpu_share")


def test_the_stack_error_names_the_stack_keys():
    found = settings_problems("prod", {**SHARED, "servedmodel:gpuShare": 5, "servedmodel:gpuMemory": "5Gi"})
    assert any(p.startswith("servedmodel:gpuMemory = '5Gi': 5 share(s) per GPU (servedmodel:gpuShare)")
               and f"({a10g_mib()}Mi, EC2's figure)" in p for p in found), found


@pytest.mark.parametrize("node_max, fits", [(2, False), (3, True)])
def test_a_node_holds_a_replica_per_share(node_max, fits):
    """g5.xlarge, 1 GPU sliced into 4: four 500m/2Gi replicas per node (CPU and memory allow 7 and
    6); 10 replicas + 1 surge need 3 nodes."""
    args, types = _fit({"servedmodel:nodeMax": node_max})
    assert capacity.gpu_slots(types["g5.xlarge"], args.resources) == 4
    assert capacity.replicas_per_node(types["g5.xlarge"], args.resources, 250, 256) == 4
    assert (capacity.fit_problems(args, types, args.resources.gpu_memory_bytes) == []) == fits


# ---- the declared objects ---------------------------------------------------------------------------

def test_a_shared_managed_pool_and_its_pods():
    run = variant_run("prod", SHARED)
    group = run.one("aws:eks/nodeGroup:NodeGroup")
    assert group.inputs["labels"].items() >= gpus.shared_node_labels(4).items()
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert base64.b64decode(template.inputs["userData"]).decode() == gpus.bottlerocket_time_slicing_settings(4)
    pod = pod_of(run)
    # Any node sliced into 4, of this pool or another model's (or stack's): not the pool's own label.
    assert pod["nodeSelector"] == {**gpus.shared_selector(4), "kubernetes.io/arch": "amd64"}
    [c] = pod["containers"]
    assert c["resources"]["limits"][specs.GPU_RESOURCE] == "1"
    assert env_of(run)[GPU_MEM_ENV] == str(4 * 2**30)
    # The pods still wait for the pool (the selector is the group's output).
    workload = next(r for r in run.resources if r.type == "kubernetes:argoproj.io/v1alpha1:Rollout")
    assert group.urn in workload.property_dependencies["spec"]
    for r in run.resources:
        if r.type.startswith("kubernetes:") and not r.type.split(":")[1].startswith(("argoproj.io/", "monitoring.")):
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)


def test_a_shared_karpenter_pool_is_valid_against_its_crds():
    run = variant_run("burst", SHARED)
    pool = run.one("kubernetes:karpenter.sh/v1:NodePool")
    node_class = run.one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
    for r in (pool, node_class):
        validate_custom_resource(kubernetes_manifest(r))
    assert pool.inputs["spec"]["template"]["metadata"]["labels"].items() >= gpus.shared_node_labels(4).items()
    assert node_class.inputs["spec"]["userData"] == gpus.bottlerocket_time_slicing_settings(4)
    # Karpenter counts nvidia.com/gpu of a node as EC2 gives it before the node registers: the
    # limit stays in replicas (one per share), at least what the GPUs need.
    assert pool.inputs["spec"]["limits"] == {"nvidia.com/gpu": 4 + 1}
    assert pod_of(run)["nodeSelector"] == {**gpus.shared_selector(4), "kubernetes.io/arch": "amd64"}


def test_whole_gpus_get_no_cap_and_no_sharing(stack_runs):
    run = stack_runs["prod"]
    assert GPU_MEM_ENV not in env_of(run)
    assert "nvidia.com/gpu.replicas" not in run.one("aws:eks/nodeGroup:NodeGroup").inputs["labels"]
    assert "userData" not in run.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    # A cap without sharing is passed as it is.
    assert env_of(variant_run("prod", {"servedmodel:gpuMemory": "8Gi"}))[GPU_MEM_ENV] == str(8 * 2**30)


def test_the_cold_start_counts_the_shared_warm_up(monkeypatch):
    # A warm-up long enough to show in the output's tenths: the build's own measurement of a
    # small model on a fast CPU can round to the same figure whether counted once or four times.
    _with_startup(monkeypatch, warmup_seconds=2.0)
    whole = run_program("prod", secrets=SECRETS).outputs["coldStart"]["classifier"]
    shared = run_program("prod", SHARED, secrets=SECRETS).outputs["coldStart"]["classifier"]
    assert shared["startSeconds"] - whole["startSeconds"] == pytest.approx(2.0 * (4 - 1))
    assert shared["nodeSeconds"] == whole["nodeSeconds"] and shared["pullSeconds"] == whole["pullSeconds"]


# ---- the default cap, from the build's measured peak -------------------------------------------------

def _with_startup(monkeypatch, **measured):
    """The build's start-up figures with `measured` in place of its own (a None value: absent)."""
    real = models.build

    def build(*args, **kwargs):
        result = real(*args, **kwargs)
        startup = {k: v for k, v in result.startup.items() if k not in measured}
        startup.update({k: v for k, v in measured.items() if v is not None})
        result.startup = startup
        return result
    monkeypatch.setattr(models, "build", build)


def _with_peak(monkeypatch, peak):
    _with_startup(monkeypatch, peak_memory_bytes=peak)


def test_the_default_cap_is_derived_from_the_builds_measured_peak(monkeypatch):
    peak = 300 * 2**20
    _with_peak(monkeypatch, peak)
    overrides = {k: v for k, v in SHARED.items() if k != "servedmodel:gpuMemory"}
    run = run_program("prod", overrides, secrets=SECRETS)
    assert env_of(run)[GPU_MEM_ENV] == str(gpus.default_gpu_memory_bytes(peak))
    assert int(env_of(run)[GPU_MEM_ENV]) >= math.ceil(peak * gpus.GPU_MEMORY_HEADROOM)


def test_a_derived_cap_that_cannot_fit_is_refused(monkeypatch):
    _with_peak(monkeypatch, 8 * 2**30)
    overrides = {k: v for k, v in SHARED.items() if k != "servedmodel:gpuMemory"}
    with pytest.raises(pulumi.RunError) as err:
        run_program("prod", overrides, secrets=SECRETS)
    assert "derived from the measured peak" in str(err.value) and "does not fit one GPU of g5.xlarge" in str(err.value)


def test_without_a_measured_peak_a_shared_model_must_name_its_cap(monkeypatch):
    _with_peak(monkeypatch, None)
    overrides = {k: v for k, v in SHARED.items() if k != "servedmodel:gpuMemory"}
    with pytest.raises(pulumi.RunError) as err:
        run_program("prod", overrides, secrets=SECRETS)
    assert "set servedmodel:gpuMemory" in str(err.value) and "peak_memory_bytes" in str(err.value)


# ---- what turning sharing on changes -------------------------------------------------------------------

def test_turning_sharing_on_updates_the_pool_in_place(stack_runs):
    """Labels update in place and the user data is a new launch template version, which the
    group follows by rolling its nodes (lifecycle_model: node_group.go, ec2_launch_template.go):
    no replacement of the (protected) group."""
    steps = plan(stack_runs["prod"], variant_run("prod", SHARED))
    ops = {(s.op, s.type) for s in steps if s.type.startswith(("aws:eks", "aws:ec2"))}
    assert ops == {("update", "aws:eks/nodeGroup:NodeGroup"), ("update", "aws:ec2/launchTemplate:LaunchTemplate")}
    group = steps.find("update", "classifier-nodes")
    assert any(p.startswith("labels") for p in group.paths)
