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
