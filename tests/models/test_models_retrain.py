"""A factory that reads its weights and data from files: retraining, new evaluation or calibration
data, or new model code next to it make a new version with the new outputs, never a cache hit on
the old ones; an unchanged rebuild stays a cache hit with the same version."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

import servedmodel.models as models
from conftest import ROOT, cli_json, run_cli

# The bring-your-own shape of docs/pipeline.md: weights (scorer.pt) and data (data.npz) are files
# next to the factory, read every time it runs; the model class lives in a module next to it.
FACTORY = '''
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from scorer_net import Scorer
from servedmodel.models import Evaluation, ModelSpec, Tolerance

HERE = Path(__file__).resolve().parent


def make_spec():
    module = Scorer()
    module.load_state_dict(torch.load(HERE / "scorer.pt", weights_only=True))
    data = np.load(HERE / "data.npz")
    return ModelSpec(
        name="scorer", module=module, example_inputs=(torch.rand(4, 6, generator=torch.Generator().manual_seed(0)),),
        input_names=["x"], output_names=["scores"], task="classification",
        calibration_inputs=[(torch.from_numpy(data["calibration"]),)],
        evaluation=Evaluation(metric="accuracy", inputs=[(torch.from_numpy(data["holdout"]),)],
                              targets=data["labels"], dataset="data.npz"),
        # parity of this random model's int8 variant is recorded, not required: these tests are
        # about what the cache serves, not about quantization
        tolerances={"int8": Tolerance(atol=None, rtol=0.0)},
    )
'''
NET = '''
import torch
from torch import nn


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.ACTIVATION(self.hidden(x)))
'''
ACTIVATIONS = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh}
PROBE = np.random.default_rng(7).random((5, 6), dtype=np.float32)


def weights(seed: int) -> dict[str, torch.Tensor]:
    """A trained state: what a training run would save (here: seeded values)."""
    g = torch.Generator().manual_seed(seed)
    return {"hidden.weight": torch.randn(16, 6, generator=g), "hidden.bias": torch.randn(16, generator=g),
            "out.weight": torch.randn(3, 16, generator=g), "out.bias": torch.randn(3, generator=g)}


def expected(state: dict[str, torch.Tensor], x: np.ndarray, activation: str = "relu") -> np.ndarray:
    """The scorer's outputs, computed with numpy from the weights alone."""
    w = {k: v.numpy().astype(np.float64) for k, v in state.items()}
    h = ACTIVATIONS[activation](x @ w["hidden.weight"].T + w["hidden.bias"])
    return h @ w["out.weight"].T + w["out.bias"]


def write_data(folder: Path, *, labels_seed: int = 0, calibration_scale: float = 1.0) -> None:
    rng = np.random.default_rng(labels_seed)
    np.savez(folder / "data.npz", holdout=np.random.default_rng(1).random((40, 6), dtype=np.float32),
             labels=rng.integers(0, 3, 40), calibration=(calibration_scale * np.random.default_rng(2).random(
                 (8, 6), dtype=np.float32)).astype(np.float32))


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """A cache of each test's own: another test's scorer with the same weights would be a hit."""
    return tmp_path / "cache"


@pytest.fixture
def scorer(tmp_path) -> tuple[str, Path]:
    """(model reference, folder): the factory, its model module, trained weights and data."""
    folder = tmp_path / "scorer"
    folder.mkdir()
    (folder / "scorer.py").write_text(FACTORY)
    (folder / "scorer_net.py").write_text(NET.replace("ACTIVATION", "relu"))
    torch.save(weights(1), folder / "scorer.pt")
    write_data(folder)
    return f"{folder / 'scorer.py'}:make_spec", folder


def onnx_outputs(result) -> np.ndarray:
    sess = ort.InferenceSession(str(result.context_dir / "model/model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["scores"], {"x": PROBE})[0])


def test_retrained_weights_make_a_new_version_with_the_new_outputs(scorer, cache_dir, tmp_path):
    ref, folder = scorer
    old = models.build(ref, "none", tmp_path / "old", cache_dir=cache_dir)
    np.testing.assert_allclose(onnx_outputs(old), expected(weights(1), PROBE), rtol=1e-4, atol=1e-4)

    torch.save(weights(2), folder / "scorer.pt")  # retrained: the factory file is unchanged
    said: list[str] = []
    new = models.build(ref, "none", tmp_path / "new", cache_dir=cache_dir, progress=said.append)
    assert not new.cache_hit and new.exported and new.version != old.version
    served = onnx_outputs(new)
    np.testing.assert_allclose(served, expected(weights(2), PROBE), rtol=1e-4, atol=1e-4)
    assert not np.allclose(served, onnx_outputs(old), atol=1e-3)
    assert any("changed: module)" in line for line in said), said


def test_an_unchanged_rebuild_after_retraining_is_a_cache_hit(scorer, cache_dir, tmp_path, monkeypatch):
    ref, folder = scorer
    models.build(ref, "none", tmp_path / "a", cache_dir=cache_dir)
    torch.save(weights(2), folder / "scorer.pt")
    retrained = models.build(ref, "none", tmp_path / "b", cache_dir=cache_dir)
    assert not retrained.cache_hit

    torch.save(weights(2), folder / "scorer.pt")  # saved again, same values: nothing to serve anew
    monkeypatch.setattr("servedmodel.models.export.export",
                        lambda *a, **k: pytest.fail("export ran on an unchanged rebuild"))
    again = models.build(ref, "none", tmp_path / "c", cache_dir=cache_dir)
    assert again.cache_hit and not again.exported and again.version == retrained.version
    np.testing.assert_array_equal(onnx_outputs(again), onnx_outputs(retrained))
    # a new process (as the CLI and `pulumi up` build) fingerprints the spec the same way
    proc = run_cli("build", "--model", ref, "--out", str(tmp_path / "d"), "--json", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    out = cli_json(proc)
    assert out["cache_hit"] is True and out["exported"] is False and out["version"] == retrained.version


@pytest.mark.parametrize("changed, compression, part", [
    ("evaluation", "none", "evaluation"),
    ("calibration", "int8", "calibration_inputs"),
])
def test_changed_data_files_make_a_new_version(scorer, cache_dir, tmp_path, changed, compression, part):
    """Evaluation labels and calibration batches the factory reads from data.npz: the quality
    gate's record and the static int8 scales follow the new data."""
    ref, folder = scorer
    old = models.build(ref, compression, tmp_path / "old", cache_dir=cache_dir, max_metric_drop=1.0)
    change: dict[str, Any] = {"labels_seed": 5} if changed == "evaluation" else {"calibration_scale": 4.0}
    write_data(folder, **change)
    said: list[str] = []
    new = models.build(ref, compression, tmp_path / "new", cache_dir=cache_dir, max_metric_drop=1.0,
                       progress=said.append)
    assert not new.cache_hit and new.version != old.version
    assert any(f"changed: {part})" in line for line in said), said
    if changed == "evaluation":
        data = np.load(folder / "data.npz")
        sess = ort.InferenceSession(str(new.context_dir / "model/model.onnx"), providers=["CPUExecutionProvider"])
        scores = np.asarray(sess.run(["scores"], {"x": data["holdout"]})[0])
        accuracy = float((scores.argmax(axis=1) == data["labels"]).mean())
        assert new.manifest["evaluation"]["value"] == pytest.approx(accuracy, abs=1e-6)
        assert new.manifest["evaluation"]["value"] != old.manifest["evaluation"]["value"]
    else:
        # static int8: the activation scales come from the calibration batches, so the model's bytes change
        assert new.manifest["compression"]["details"]["method"] == "static"
        assert new.manifest["sha256"] != old.manifest["sha256"]


def test_new_model_code_next_to_the_factory_makes_a_new_version(scorer, cache_dir, tmp_path):
    """The model class lives in scorer_net.py; changing its forward (same weights) is a new model.
    Built by the CLI, a new process each time, as `pulumi up` builds."""
    ref, folder = scorer

    def build(out: str) -> dict:
        proc = run_cli("build", "--model", ref, "--out", str(tmp_path / out), "--json", cache_dir=cache_dir)
        assert proc.returncode == 0, proc.stderr
        return cli_json(proc)

    old = build("old")
    (folder / "scorer_net.py").write_text(NET.replace("ACTIVATION", "tanh"))
    new = build("new")
    assert new["cache_hit"] is False and new["version"] != old["version"]
    sess = ort.InferenceSession(str(tmp_path / "new/model/model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.asarray(sess.run(["scores"], {"x": PROBE})[0]), expected(weights(1), PROBE, "tanh"),
                               rtol=1e-4, atol=1e-4)


TAGGER = ROOT / "examples" / "tagger"


def test_the_docs_show_the_example_factory_as_it_is():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "pipeline.md").read_text(), re.S)
    assert (TAGGER / "my_model.py").read_text() in blocks


@pytest.mark.slow
def test_the_docs_tagger_example_trains_builds_and_retrains(tmp_path):
    """docs/pipeline.md, "Bring your own model", followed as written: train, build, retrain,
    build again (a new version), and once more (a cache hit)."""
    folder = tmp_path / "tagger"
    shutil.copytree(TAGGER, folder, ignore=shutil.ignore_patterns("tagger.pt", "__pycache__"))
    cache = tmp_path / "cache"

    def train(*args: str) -> None:
        proc = subprocess.run([sys.executable, str(folder / "train_tagger.py"), *args], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr

    def build(out: str) -> dict:
        proc = run_cli("build", "--model", f"{folder / 'my_model.py'}:make_spec", "--compression", "int8",
                       "--out", str(tmp_path / out), "--json", cache_dir=cache)
        assert proc.returncode == 0, proc.stderr
        return cli_json(proc) | {"stderr": proc.stderr}

    train()
    first = build("first")
    train("--seed", "1")
    retrained = build("retrained")
    assert retrained["cache_hit"] is False and retrained["exported"] is True
    assert retrained["version"] != first["version"] and "(changed: module)" in retrained["stderr"]
    again = build("again")
    assert again["cache_hit"] is True and again["version"] == retrained["version"]
