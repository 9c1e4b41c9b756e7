"""Structured pruning (issue 13): whole channels and neurons removed through torch-pruning's
dependency graph, fine-tuned, exported, and judged by the task metric (parity reported only)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import cache_key_of, run_cli
from test_models_digits import onnx_accuracy


def weight_shapes(path) -> dict[str, list[tuple[int, ...]]]:
    """The weight shapes of the graph's Conv and Gemm/MatMul nodes, in graph order."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    shapes: dict[str, list] = {"Conv": [], "Dense": []}
    for n in model.graph.node:
        w = n.input[1] if len(n.input) > 1 else None
        if w in inits:
            if n.op_type == "Conv":
                shapes["Conv"].append(tuple(inits[w].dims))
            elif n.op_type in ("Gemm", "MatMul"):
                shapes["Dense"].append(tuple(inits[w].dims))
    return shapes


def parameter_count(path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def test_digits_prune_really_shrinks_and_keeps_accuracy(build_once):
    fp32, pruned = build_once("digits-cnn", "none"), build_once("digits-cnn", "prune")
    a, b = fp32.context_dir / "model/model.onnx", pruned.context_dir / "model/model.onnx"
    # the target: <= 0.6 of the fp32 bytes, accuracy drop <= 0.01, gated and recorded
    assert pruned.sizes["final_bytes"] <= 0.6 * pruned.sizes["fp32_bytes"]
    assert pruned.sizes["fp32_bytes"] == fp32.sizes["final_bytes"]
    ev = pruned.manifest["evaluation"]
    assert ev["metric"] == "accuracy" and ev["passed"] and ev["drop"] <= 0.01 and ev["max_drop"] == 0.02
    assert ev["value"] == pytest.approx(onnx_accuracy(pruned.context_dir), abs=1e-6)
    # tensors really shrink (channels removed, not masked): every conv has fewer output channels,
    # the hidden dense layer fewer neurons, the classes stay 10
    before, after = weight_shapes(a), weight_shapes(b)
    assert len(before["Conv"]) == len(after["Conv"]) == 3
    for w0, w1 in zip(before["Conv"], after["Conv"]):
        assert w1[0] < w0[0] and w1[2:] == w0[2:]
    assert parameter_count(b) <= 0.6 * parameter_count(a)
    assert not any(np.count_nonzero(numpy_helper.to_array(t)) == 0 for t in onnx.load(str(b)).graph.initializer
                   if t.data_type == 1 and len(t.dims) >= 2)  # no all-zero (masked) weights
    assert pruned.manifest["outputs"] == fp32.manifest["outputs"]
    assert pruned.manifest["inputs"] == fp32.manifest["inputs"]
    d = pruned.manifest["compression"]["details"]["prune"]
    assert d["params_after"] < 0.6 * d["params_before"] and d["kept_whole"] == ["classifier.3"]
    assert d["finetune"]["epochs"] == 3 and d["finetune"]["rows"] == 1347
    # parity measured and reported, not required
    p = pruned.manifest["parity"]
    assert p["required"] is False and p["outputs"]["logits"]["top1_agreement"] is not None


def test_refused_prune_leaves_nothing(build_once, cache_dir, tmp_path):
    """(The CLI's exit code 9 is tested in test_models_quality; here the API, in-process.)"""
    import servedmodel.models as models
    import servedmodel.models.cache as cache_mod

    build_once("digits-cnn", "none")  # training and export cached
    out = tmp_path / "ctx"
    with pytest.raises(models.BuildError) as e:
        models.build("digits-cnn", "prune", out, cache_dir=cache_dir, max_metric_drop=0.0001)
    assert e.value.exit_code == 9 and e.value.step == "evaluate"
    assert "the prune variant is refused: accuracy on 'sklearn-digits-test" in str(e.value)
    assert "exceeds the allowance 0.0001 (--max-metric-drop for prune)" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    key = cache_key_of("digits-cnn", "prune", cache_dir=cache_dir, max_metric_drop=0.0001)
    assert not cache_mod.entry_dir(cache_dir, key).exists()


@pytest.mark.slow
def test_digits_prune_int8(build_once):
    pruned, both = build_once("digits-cnn", "prune"), build_once("digits-cnn", "prune-int8")
    assert both.sizes["final_bytes"] < pruned.sizes["final_bytes"]
    d = both.manifest["compression"]["details"]
    assert d["int8"]["method"] == "static"
    assert d["prune"]["params_after"] == pruned.manifest["compression"]["details"]["prune"]["params_after"]
    ev = both.manifest["evaluation"]
    assert ev["passed"] and ev["drop"] <= ev["max_drop"] == 0.03
    assert ev["value"] == pytest.approx(onnx_accuracy(both.context_dir), abs=1e-6)


def test_prune_needs_an_evaluation(cache_dir, tmp_path):
    proc = run_cli("build", "--model", "mnist-mlp", "--compression", "prune", "--out", str(tmp_path / "c"),
                   cache_dir=cache_dir)
    assert proc.returncode == 6 and "prune needs a task metric" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_residual_blocks_stay_consistent():
    """resnet-tiny's residual adds couple the channels of both branches: the dependency graph
    prunes them together, so the pruned network runs and keeps its output."""
    from servedmodel.models.prune import prune
    from servedmodel.models.zoo.cnn import resnet_tiny

    spec = resnet_tiny()
    module, details = prune(spec)
    x = spec.example_inputs[0]
    with torch.no_grad():
        assert module(x).shape == spec.module(x).shape
    block = module.stages[1]
    # the add: conv2's output channels equal the shortcut conv's
    assert block.conv2.out_channels == block.shortcut[0].out_channels < 48
    assert details["params_after"] < 0.5 * details["params_before"] and details["finetune"] is None
    assert details["kept_whole"] == ["head.2"]
    # the spec's module is left as it was
    assert spec.module.stages[1].conv2.out_channels == 48


def test_keep_and_options_are_checked():
    from servedmodel.models import ModelSpec, PruneOptions, SpecError

    with pytest.raises(SpecError) as e:
        PruneOptions(ratio=1.0, importance="taylor", round_to=0)
    for words in ("ratio must be a number in (0, 1)", "importance must be one of l1, l2", "round_to must be"):
        assert words in str(e.value)
    with pytest.raises(SpecError, match=r"prune.keep names \['nope'\]"):
        ModelSpec(name="m", module=torch.nn.Linear(3, 2), example_inputs=(torch.zeros(2, 3),), input_names=["x"],
                  output_names=["y"], prune=PruneOptions(keep=("nope",)))


def test_keep_names_layers_to_leave_whole():
    from servedmodel.models import PruneOptions
    from servedmodel.models.prune import prune
    from servedmodel.models.zoo.cnn import lenet

    spec = lenet()
    spec.prune = PruneOptions(ratio=0.5, keep=("features.0",))
    module, details = prune(spec)
    assert module.features[0].out_channels == 6 and module.features[3].out_channels < 16
    assert details["kept_whole"] == ["classifier.5", "features.0"]


def test_finetune_by_distillation_brings_the_pruned_model_back():
    """FineTune(targets=None): the pruned model learns the unpruned model's outputs (no labels),
    and ends closer to them than pruning alone leaves it."""
    import importlib.util
    from pathlib import Path

    from servedmodel.models import FineTune, SpecError
    from servedmodel.models.prune import prune

    path = Path(__file__).resolve().parent / "factories" / "quality.py"
    spec_mod = importlib.util.spec_from_file_location("quality_factories", path)
    assert spec_mod is not None and spec_mod.loader is not None
    factories = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(factories)
    spec = factories.regressor()
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        teacher = spec.module(x)
    pruned_only, d0 = prune(spec)
    spec.finetune = FineTune(inputs=(x,), targets=None, loss="mse", epochs=30, lr=1e-2, batch_size=32)
    distilled, d1 = prune(spec)
    with torch.no_grad():
        err0 = float(((pruned_only(x) - teacher) ** 2).mean())
        err1 = float(((distilled(x) - teacher) ** 2).mean())
    assert d0["finetune"] is None and d1["finetune"]["targets"] == "distilled from the unpruned module"
    assert distilled[0].out_features == pruned_only[0].out_features == 16 and distilled[2].out_features == 4
    assert err1 < 0.5 * err0
    with pytest.raises(SpecError, match=r"targets None .* needs loss 'mse'"):
        FineTune(inputs=(x,), targets=None, loss="cross_entropy")


@pytest.mark.slow
def test_pruned_build_is_byte_identical_without_the_cache(build_once, tmp_path):
    """Training, pruning and fine-tuning are deterministic: a build from scratch (no cache, so
    digits-cnn trains again) gives the same bytes and version."""
    import filecmp

    import servedmodel.models as models

    first = build_once("digits-cnn", "prune")
    again = models.build("digits-cnn", "prune", tmp_path / "again", use_cache=False)
    assert again.version == first.version
    files = sorted(p.relative_to(first.context_dir) for p in first.context_dir.rglob("*") if p.is_file())
    assert all(filecmp.cmp(first.context_dir / f, again.context_dir / f, shallow=False) for f in files)
