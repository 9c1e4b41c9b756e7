"""The spec fingerprint (models/fingerprint.py): what a factory returned, as the cache key sees it.
Every field of the spec counts; the same spec gives the same fingerprint in any process; a
change anywhere in the weights, the data or the options changes the part it belongs to."""
from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from servedmodel.models import Evaluation, FineTune, ModelSpec, Tolerance
from servedmodel.models.fingerprint import spec_fingerprint


class Net(nn.Module):
    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 3)
        self.temperature = temperature  # a plain attribute that forward reads
        self.groups = {"a": 1, "b": 2}  # a mapping and a set, encoded whatever the hash seed
        self.tags = {"x", "y", "z"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.hidden(x)))) / self.temperature


def share_above(threshold: float):
    """A metric function whose closure holds a setting."""
    def above(outputs, targets) -> float:
        return float((np.asarray(outputs).max(axis=1) > threshold).mean())
    return above


def batch(seed: int, rows: int = 4) -> tuple[torch.Tensor]:
    return (torch.rand(rows, 6, generator=torch.Generator().manual_seed(seed)),)


def make(mutate=None, **fields) -> ModelSpec:
    """The same spec on every call (seeded), with `fields` replaced and `mutate(module)` applied."""
    torch.manual_seed(0)
    module = Net(temperature=fields.pop("temperature", 1.0)).eval()
    with torch.no_grad():
        module.norm.running_mean.copy_(torch.linspace(-1, 1, 8))
    if mutate is not None:
        with torch.no_grad():
            mutate(module)
    base = dict(
        name="net", module=module, example_inputs=batch(1), input_names=["x"], output_names=["y"],
        task="classification", verification_inputs=[batch(2, 8)], calibration_inputs=[batch(3), batch(4)],
        evaluation=[Evaluation(metric="accuracy", inputs=[batch(5, 10)], targets=np.arange(10) % 3, dataset="held"),
                    Evaluation(metric=share_above(0.5), name="above", inputs=[batch(5, 10)], dataset="held")],
        finetune=FineTune(inputs=batch(6, 16), targets=torch.arange(16) % 3, epochs=1),
        tolerances={"int8": Tolerance(atol=None, rtol=0.0, min_cosine=0.95)},
        input_ranges={"x": (0.0, 1.0)},
    )
    return ModelSpec(**{**base, **fields})


def test_every_field_of_the_spec_is_a_part():
    parts = spec_fingerprint(make()).parts
    assert set(parts) == {f.name for f in dataclasses.fields(ModelSpec)}


def test_the_same_spec_gives_the_same_fingerprint():
    a, b = spec_fingerprint(make()), spec_fingerprint(make())
    assert a.digest == b.digest and a.parts == b.parts


CHANGES = {
    "a weight": (dict(mutate=lambda m: m.hidden.weight[0, 0].add_(1e-3)), ["module"]),
    "a buffer": (dict(mutate=lambda m: m.norm.running_var[3].mul_(2.0)), ["module"]),
    "an attribute forward reads": (dict(temperature=2.0), ["module"]),
    "an example input": (dict(example_inputs=batch(11)), ["example_inputs"]),
    "a verification batch": (dict(verification_inputs=[batch(12, 8)]), ["verification_inputs"]),
    "a calibration batch": (dict(calibration_inputs=[batch(3), batch(13)]), ["calibration_inputs"]),
    "evaluation labels": (dict(evaluation=[
        Evaluation(metric="accuracy", inputs=[batch(5, 10)], targets=np.arange(10) % 2, dataset="held"),
        Evaluation(metric=share_above(0.5), name="above", inputs=[batch(5, 10)], dataset="held")]), ["evaluation"]),
    "a setting in a metric's closure": (dict(evaluation=[
        Evaluation(metric="accuracy", inputs=[batch(5, 10)], targets=np.arange(10) % 3, dataset="held"),
        Evaluation(metric=share_above(0.7), name="above", inputs=[batch(5, 10)], dataset="held")]), ["evaluation"]),
    "fine-tuning data": (dict(finetune=FineTune(inputs=batch(16, 16), targets=torch.arange(16) % 3, epochs=1)),
                         ["finetune"]),
    "a tolerance": (dict(tolerances={"int8": Tolerance(atol=None, rtol=0.0, min_cosine=0.96)}), ["tolerances"]),
    "a request bound": (dict(input_ranges={"x": (0.0, 2.0)}), ["input_ranges"]),
    "the batching cap": (dict(max_batch_size=16), ["max_batch_size", "warmup_batch_sizes"]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_changes_the_fingerprint_and_names_its_field(change):
    fields, parts = CHANGES[change]
    base, changed = spec_fingerprint(make()), spec_fingerprint(make(**fields))
    assert changed.digest != base.digest
    assert changed.changed_parts(base.parts) == parts


def test_the_fingerprint_is_the_same_in_another_process():
    """The CLI builds in a new process each time: string hashing (sets, dict order) and object
    ids must not reach the fingerprint."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_models_fingerprint import make
        from servedmodel.models.fingerprint import spec_fingerprint
        print(spec_fingerprint(make()).digest)
    """)
    digests = {subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], cwd=ROOT, check=True,
                              capture_output=True, text=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
                              ).stdout.strip() for seed in ("1", "2")}
    # Two processes, two hash seeds, one fingerprint. (Not compared with this process: pytest
    # rewrites this module's asserts and adds its helper module to the namespace Net's code
    # digest follows, which a factory loaded by a build never has.)
    assert len(digests) == 1 and len(next(iter(digests))) == 64


NET_SOURCE = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x):
        return torch.ACTIVATION(self.layer(x))
"""


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_model_class_code_is_covered(tmp_path):
    """Same weights, another forward (a class in a module next to the factory): another fingerprint;
    the same code in another file: the same one (the file's place does not count)."""
    sources = {"relu_a": NET_SOURCE.replace("ACTIVATION", "relu"), "tanh": NET_SOURCE.replace("ACTIVATION", "tanh"),
               "relu_b": NET_SOURCE.replace("ACTIVATION", "relu")}
    digests = {}
    for name, source in sources.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "small_net.py").write_text(source)
        module = _import(tmp_path / name / "small_net.py", f"fingerprint_test_{name}")
        try:
            torch.manual_seed(0)
            net = module.Small()
            spec = ModelSpec(name="small", module=net, example_inputs=(batch(1)[0][:, :4],), input_names=["x"],
                             output_names=["y"])
            digests[name] = spec_fingerprint(spec).parts["module"]
        finally:
            sys.modules.pop(f"fingerprint_test_{name}")
    assert digests["relu_a"] == digests["relu_b"] != digests["tanh"]


ENV_FACTORY = """
import os

import torch
from torch import nn

from servedmodel.models import ModelSpec


def make_spec():
    torch.manual_seed(0)
    width = int(os.environ.get("FINGERPRINT_TEST_WIDTH", "8"))  # a setting from the environment
    module = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
    return ModelSpec(name="env", module=module, example_inputs=(torch.ones(2, 4),), input_names=["x"],
                     output_names=["y"])
"""


def test_a_factory_reading_the_environment_is_fingerprinted_by_what_it_returns(tmp_path, monkeypatch):
    from servedmodel.models.loader import load_spec, parse_ref

    (tmp_path / "env_factory.py").write_text(ENV_FACTORY)
    ref = parse_ref(f"{tmp_path / 'env_factory.py'}:make_spec")
    default = spec_fingerprint(load_spec(ref))
    assert spec_fingerprint(load_spec(ref)).digest == default.digest
    monkeypatch.setenv("FINGERPRINT_TEST_WIDTH", "16")
    wider = spec_fingerprint(load_spec(ref))
    assert wider.changed_parts(default.parts) == ["module"]
