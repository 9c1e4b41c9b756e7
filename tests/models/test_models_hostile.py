"""Issue 9, pipeline side: what the pipeline ships must be right even when a model, a factory,
the cache or the user's environment misbehaves."""
from __future__ import annotations

from pathlib import Path

import pytest

import models

HOSTILE = Path(__file__).resolve().parent / "factories" / "hostile.py"


def ref(factory: str) -> str:
    return f"{HOSTILE}:{factory}"


def test_batch_sizes_to_verify_reach_the_max():
    from models.verify import batch_sizes_to_verify

    assert batch_sizes_to_verify(32) == (1, 2, 4, 8, 16, 32)
    assert batch_sizes_to_verify(20) == (1, 2, 4, 8, 16, 20)
    assert batch_sizes_to_verify(2) == (1, 2)
    assert batch_sizes_to_verify(1) == (1,)
    assert batch_sizes_to_verify(0) == ()


def test_model_wrong_above_batch_16_is_refused(tmp_path):
    """Export traces the small-batch branch; the server would form batches of 32."""
    with pytest.raises(models.BuildError) as e:
        models.build(ref("big_batch_branch"), "none", tmp_path / "ctx", use_cache=False)
    assert e.value.step == "verify" and e.value.exit_code == 5
    assert "first on the batch-32 batch" in str(e.value), str(e.value)
    assert not (tmp_path / "ctx").exists()


def test_verified_batch_sizes_are_recorded(build_once):
    m = build_once("mnist-mlp", "none").manifest
    assert m["parity"]["batch_sizes"] == [1, 2, 4, 8, 16, 32]


def test_batch_coupled_model_is_refused(tmp_path):
    """y - y.mean(0): one client's answer would depend on another client's rows."""
    with pytest.raises(models.BuildError) as e:
        models.build(ref("mean_centred"), "none", tmp_path / "ctx", use_cache=False)
    msg = str(e.value)
    assert e.value.step == "verify" and e.value.exit_code == 5
    assert "batch-coupled model" in msg and "computed alone differs" in msg and "max_batch_size=0" in msg
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize("module, probes, coupled, words", [
    ("RunningSum", 4, True, "computed alone differs"),  # row 0 alone is the same; the last row is not
    ("Rolled", 4, True, "computed alone differs"),
    ("RunningSum", 0, True, "run in reverse order differs"),  # the order check on its own
    ("Rolled", 0, True, "run in reverse order differs"),
    ("RowWise", 4, False, ""),
])
def test_rows_alone_and_reordered_must_agree(monkeypatch, module, probes, coupled, words):
    """The check itself, on eager torch only (no export): couplings either way are caught,
    honest use of the batch dimension is not."""
    import importlib.util

    import torch

    import models.verify
    from models.verify import check_rows_independent, reference

    monkeypatch.setattr(models.verify, "ROW_PROBES", probes)
    spec_ = importlib.util.spec_from_file_location("hostile_factories", HOSTILE)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    torch.manual_seed(0)
    spec = mod._spec("probe", getattr(mod, module)(), max_batch_size=12)
    ref_ = reference(spec)
    if coupled:
        with pytest.raises(models.BuildError) as e:
            check_rows_independent(spec, ref_)
        assert "batch-coupled model" in str(e.value) and words in str(e.value), str(e.value)
    else:
        check_rows_independent(spec, ref_)

