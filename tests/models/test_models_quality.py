"""The task-quality gate (issue 13): the metric is measured with onnxruntime on the fp32 export
and on the variant, recorded in the manifest, and a variant past its allowance is refused
(exit 9) leaving nothing behind, neither at --out nor in the cache."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ROOT, cache_key_of, cli_json, run_cli

QUALITY = Path(__file__).resolve().parent / "factories" / "quality.py"
REGRESSOR = f"{QUALITY}:regressor"


def test_variant_within_the_allowance_records_its_evaluation(build_once):
    r = build_once(REGRESSOR, "fp16")
    ev = r.manifest["evaluation"]
    assert {k: ev[k] for k in ("metric", "dataset", "n", "max_drop", "higher_is_better", "passed")} == {
        "metric": "mse", "dataset": "byo-held-out", "n": 24, "max_drop": 1e-3, "higher_is_better": False,
        "passed": True}
    # fp16 really moved the outputs: the error grew, and drop = value - reference (lower is better)
    assert ev["value"] > ev["reference"] >= 0
    assert ev["drop"] == pytest.approx(ev["value"] - ev["reference"], rel=1e-4) and 0 < ev["drop"] <= 1e-3
    assert r.summary()["evaluation"] == ev
    # the fp32 context: the reference itself, drop 0
    fp32 = build_once(REGRESSOR, "none").manifest["evaluation"]
    assert fp32["value"] == fp32["reference"] == ev["reference"] and fp32["drop"] == 0


def test_refused_variant_exits_9_and_leaves_nothing(build_once, cache_dir, tmp_path):
    import servedmodel.models.cache as cache_mod

    build_once(REGRESSOR, "fp16")  # the export is cached: this test only pays for the gate
    out = tmp_path / "ctx"
    proc = run_cli("build", "--model", REGRESSOR, "--compression", "fp16", "--out", str(out),
                   "--max-metric-drop", "0", "--json", cache_dir=cache_dir)
    assert proc.returncode == 9, proc.stderr
    body = cli_json(proc)
    assert body["step"] == "evaluate" and body["exit_code"] == 9
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1
    for words in ("fp16 variant is refused", "mse on 'byo-held-out' (n=24)", "for the fp32 export",
                  "exceeds the allowance 0", "--max-metric-drop"):
        assert words in line[0], line[0]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no context, no staging folder
    key = cache_key_of(REGRESSOR, "fp16", cache_dir=cache_dir, max_metric_drop=0.0)
    assert cache_mod.lookup(cache_dir, key) is None and not cache_mod.entry_dir(cache_dir, key).exists()


def test_an_old_context_at_out_survives_a_refusal(build_once, cache_dir, tmp_path):
    """A refused rebuild must not replace (or damage) the context already at --out."""
    good = build_once(REGRESSOR, "fp16")
    out = tmp_path / "ctx"
    import shutil
    shutil.copytree(good.context_dir, out)
    before = (out / "model/manifest.json").read_bytes()
    proc = run_cli("build", "--model", REGRESSOR, "--compression", "fp16", "--out", str(out),
                   "--max-metric-drop", "0", cache_dir=cache_dir)
    assert proc.returncode == 9
    assert (out / "model/manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]


def test_without_an_evaluation_the_summary_says_no_metric(build_once, cache_dir, tmp_path):
    r = build_once("lenet", "fp16")
    assert r.manifest["evaluation"] is None
    proc = run_cli("build", "--model", "lenet", "--compression", "fp16", "--out", str(tmp_path / "c"),
                   cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    row = [ln for ln in proc.stdout.splitlines() if ln.startswith("task metric")]
    assert len(row) == 1 and row[0].endswith("none measured (the spec has no evaluation)")


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_bad_max_metric_drop_is_a_usage_error(cache_dir, tmp_path, value):
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(tmp_path / "c"), f"--max-metric-drop={value}",
                   cache_dir=cache_dir)
    assert proc.returncode == 2 and "max_metric_drop must be a finite number >= 0" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_allowance_is_part_of_the_cache_key():
    import servedmodel.models.cache as cache_mod
    from servedmodel.models.loader import parse_ref

    ref, spec = parse_ref("mnist-mlp"), "0" * 64  # any spec fingerprint: only the allowance varies
    keys = {cache_mod.cache_key(ref, "int8", "cpu", spec_digest=spec, max_metric_drop=d) for d in (None, 0.0, 0.01)}
    assert len(keys) == 3
    assert (cache_mod.cache_key(ref, "int8", "cpu", spec_digest=spec)
            == cache_mod.cache_key(ref, "int8", "cpu", spec_digest=spec, max_metric_drop=None))


def test_build_takes_the_override(build_once, cache_dir, tmp_path):
    """models.build(max_metric_drop=...) is what components pass from the stack config."""
    import servedmodel.models as models

    build_once(REGRESSOR, "fp16")
    with pytest.raises(models.BuildError) as e:
        models.build(REGRESSOR, "fp16", tmp_path / "c", cache_dir=cache_dir, max_metric_drop=0.0)
    assert e.value.exit_code == 9 and e.value.step == "evaluate"
    r = models.build(REGRESSOR, "fp16", tmp_path / "c", cache_dir=cache_dir, max_metric_drop=0.5)
    assert r.manifest["evaluation"]["max_drop"] == 0.5


# --- the metrics themselves -------------------------------------------------------------------

def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    from servedmodel.models.evaluate import spearman

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=40).astype(float)  # ties
    b = a + rng.normal(0, 2, size=40)
    result: Any = spearmanr(a, b)  # (scipy's result class is private)
    assert spearman(a, b) == pytest.approx(result.statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_builtin_metrics():
    import torch

    from servedmodel.models import Evaluation
    from servedmodel.models.evaluate import measure

    x = [(torch.zeros(3, 2),)]
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert measure(Evaluation("accuracy", x, targets=[1, 0, 0]), logits, logits) == pytest.approx(2 / 3)
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ev = Evaluation("neighbour-agreement", x)
    assert measure(ev, emb, emb) == 1.0
    swapped = emb[[0, 2, 1, 3]]  # rows 1 and 2 trade places: every neighbour changes
    assert measure(ev, swapped, emb) == 0.0
    ev2 = Evaluation("neighbour-agreement", x, top_k=2)  # rows 2 and 3 keep theirs as second nearest
    assert measure(ev2, swapped, emb) == 0.5 and ev2.metric_name == "neighbour-agreement@2"
    pairs = [(0, 1, 5.0), (0, 2, 0.0), (2, 3, 5.0), (1, 3, 1.0)]  # cos 0.994, 0, 0.994, 0.22
    assert measure(Evaluation("spearman", x, targets=pairs), emb, emb) == pytest.approx(1.0)


def test_evaluation_is_checked_on_creation():
    import torch

    from servedmodel.models import Evaluation, ModelSpec, SpecError

    x = [(torch.zeros(2, 3),)]
    with pytest.raises(SpecError) as e:
        Evaluation("f1", x)
    assert "metric must be one of accuracy, spearman, neighbour-agreement" in str(e.value)
    with pytest.raises(SpecError) as e:
        Evaluation("accuracy", [], max_drop={"int4": 0.1, "int8": -1})
    for words in ("metric 'accuracy' needs targets", "inputs must be a non-empty list",
                  "max_drop key 'int4' is not a compression", "max_drop['int8'] must be a number >= 0"):
        assert words in str(e.value)
    with pytest.raises(SpecError, match="needs a name"):
        Evaluation(lambda o, t: 0.0, x)
    with pytest.raises(SpecError, match="top_k applies to metric 'neighbour-agreement' only"):
        Evaluation("accuracy", x, targets=[0, 1], top_k=3)
    with pytest.raises(SpecError, match="'spearman' needs targets"):
        Evaluation("spearman", x, targets=[(0, 1)])
    with pytest.raises(SpecError) as e:
        ModelSpec(name="m", module=torch.nn.Linear(3, 2), example_inputs=(torch.zeros(2, 3),), input_names=["x"],
                  output_names=["y"],
                 evaluation=Evaluation("neighbour-agreement", [(torch.zeros(2, 3, dtype=torch.int64),)], output="z"))
    assert "evaluation.output 'z' is not one of output_names" in str(e.value)
    assert "evaluation.inputs[0] must be a tuple of 1 tensors matching" in str(e.value)


def test_manifest_evaluation_is_tolerated_by_the_server(build_once):
    """serving/ reads manifests with the new key (it must ignore what it does not use)."""
    import sys
    sys.path.insert(0, str(ROOT))
    from servedmodel.serving.manifest import load_manifest  # noqa: PLC0415

    ctx = build_once(REGRESSOR, "fp16").context_dir
    m = load_manifest(ctx)
    assert m.name == "byo-regressor"
    assert json.loads((ctx / "model/manifest.json").read_text())["evaluation"]["metric"] == "mse"
