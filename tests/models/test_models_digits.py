"""digits-cnn (issue 13): trained at build time on scikit-learn's bundled 8x8 digits,
deterministically, cached; its test accuracy is the task metric the quality gate measures."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest


def onnx_accuracy(context_dir) -> float:
    """Accuracy of a built context on the fixed test split, measured here, independently of
    the pipeline's own record."""
    from servedmodel.models.zoo.digits import dataset

    _, _, x_te, y_te = dataset()
    sess = ort.InferenceSession(str(context_dir / "model/model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.asarray(sess.run(["logits"], {"input": x_te.numpy()})[0])
    return float((logits.argmax(1) == y_te.numpy()).mean())


def test_fixed_split_from_the_bundled_data():
    from servedmodel.models.zoo.digits import dataset

    x_tr, y_tr, x_te, y_te = dataset()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert sorted(np.unique(y_te.numpy()).tolist()) == list(range(10))
    again = dataset()
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip((x_tr, y_tr, x_te, y_te), again))


def test_fp32_accuracy_at_least_095_and_recorded(build_once):
    r = build_once("digits-cnn", "none")
    ev = r.manifest["evaluation"]
    assert ev["metric"] == "accuracy" and ev["n"] == 450 and ev["dataset"].startswith("sklearn-digits-test")
    measured = onnx_accuracy(r.context_dir)
    assert measured >= 0.95
    assert ev["reference"] == ev["value"] == pytest.approx(measured, abs=1e-6) and ev["drop"] == 0


def test_int8_drop_recorded_and_small(build_once):
    fp32, int8 = build_once("digits-cnn", "none"), build_once("digits-cnn", "int8")
    ev = int8.manifest["evaluation"]
    assert ev["reference"] == fp32.manifest["evaluation"]["reference"]
    assert ev["value"] == pytest.approx(onnx_accuracy(int8.context_dir), abs=1e-6)
    assert ev["drop"] == pytest.approx(ev["reference"] - ev["value"], abs=1e-6)
    assert ev["drop"] <= 0.005 and ev["max_drop"] == 0.01 and ev["passed"]


def test_training_is_cached_with_the_build(build_once, cache_dir):
    """The weights trained by the session's first digits-cnn build are reused: the cache holds
    them, and a factory call inside a cached build gets them without training."""
    import time

    import servedmodel.models.cache as cache_mod
    from servedmodel.models.zoo.digits import trained_module, training_key

    build_once("digits-cnn", "none")
    entries = list((cache_dir / "trained").iterdir())
    assert len(entries) == 1 and (entries[0] / "key").read_text() == "digits-cnn-" + training_key()
    t = time.perf_counter()
    with cache_mod.building_with(cache_dir):
        data, reused = cache_mod.cached_bytes("trained", "digits-cnn-" + training_key(),
                                              lambda: pytest.fail("trained again"))
        module = trained_module()
    assert reused and data == (entries[0] / "artifact").read_bytes()
    assert time.perf_counter() - t < 5
    assert sum(p.numel() for p in module.parameters()) > 0


@pytest.mark.slow
def test_training_is_deterministic(build_once, cache_dir):
    """Training afresh (no cache) gives the very weights the build cached: same bytes, same version."""
    import io

    import torch

    from servedmodel.models.zoo.digits import trained_module, training_key

    build_once("digits-cnn", "none")
    entry = next((cache_dir / "trained").iterdir())
    assert (entry / "key").read_text().endswith(training_key())
    saved = torch.load(io.BytesIO((entry / "artifact").read_bytes()), weights_only=True)
    fresh = trained_module()  # outside a build: trains now
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
