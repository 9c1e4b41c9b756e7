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


# ---- cache integrity (item 9) -------------------------------------------------------------

def _entry(cache, factory: str, compression: str = "none") -> Path:
    from models.cache import cache_key, entry_dir
    from models.loader import parse_ref

    return entry_dir(cache, cache_key(parse_ref(ref(factory)), compression, "cpu"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A private cache holding tiny_a and tiny_b (same name and sizes, other weights)."""
    root = tmp_path_factory.mktemp("tiny")
    cache = root / "cache"
    a = models.build(ref("tiny_a"), "none", root / "a", cache_dir=cache)
    b = models.build(ref("tiny_b"), "none", root / "b", cache_dir=cache)
    assert a.version != b.version and a.sizes == b.sizes
    return cache, a, b


def test_flipped_byte_in_a_cached_model_is_rebuilt(tiny_cache, tmp_path):
    from conftest import cli_json, run_cli

    cache, a, _ = tiny_cache
    model = _entry(cache, "tiny_a") / "context/model/model.onnx"
    size = model.stat().st_size
    _flip_byte(model)
    assert model.stat().st_size == size
    proc = run_cli("build", "--model", ref("tiny_a"), "--out", str(tmp_path / "ctx"), "--json", cache_dir=cache)
    assert proc.returncode == 0, proc.stderr
    out = cli_json(proc)
    assert out["cache_hit"] is False and out["version"] == a.version
    assert len(out["cache_repaired"]) == 1 and "content hash mismatch in model/model.onnx" in out["cache_repaired"][0]
    assert "is damaged (content hash mismatch in model/model.onnx); building it again" in proc.stderr
    assert (tmp_path / "ctx/model/model.onnx").read_bytes() == (a.context_dir / "model/model.onnx").read_bytes()
    # the entry was rebuilt: the next build is a clean hit
    again = models.build(ref("tiny_a"), "none", tmp_path / "again", cache_dir=cache)
    assert again.cache_hit and again.cache_repaired == [] and again.version == a.version


def test_model_planted_in_a_cache_entry_is_not_served(tiny_cache, tmp_path):
    import shutil

    cache, a, b = tiny_cache
    entry = _entry(cache, "tiny_a") / "context"
    shutil.rmtree(entry)
    shutil.copytree(_entry(cache, "tiny_b") / "context", entry)  # same name, same sizes
    r = models.build(ref("tiny_a"), "none", tmp_path / "ctx", cache_dir=cache)
    assert not r.cache_hit and r.version == a.version and r.cache_repaired
    assert (tmp_path / "ctx/model/model.onnx").read_bytes() == (a.context_dir / "model/model.onnx").read_bytes()
    assert (tmp_path / "ctx/model/model.onnx").read_bytes() != (b.context_dir / "model/model.onnx").read_bytes()


def test_file_added_to_a_cache_entry_is_detected(tiny_cache, tmp_path):
    cache, a, _ = tiny_cache
    (_entry(cache, "tiny_a") / "context/serving/extra.py").write_text("print('planted')\n")
    r = models.build(ref("tiny_a"), "none", tmp_path / "ctx", cache_dir=cache)
    assert not r.cache_hit and any("added: serving/extra.py" in n for n in r.cache_repaired)
    assert not (tmp_path / "ctx/serving/extra.py").exists() and r.version == a.version


def test_flipped_byte_in_the_cached_export_is_exported_again(tiny_cache, tmp_path):
    from models.cache import cache_key, export_dir
    from models.loader import parse_ref

    cache, _, _ = tiny_cache
    exported = export_dir(cache, cache_key(parse_ref(ref("tiny_a")), "export", "any", export_only=True)) / "model.onnx"
    _flip_byte(exported)
    r = models.build(ref("tiny_a"), "fp16", tmp_path / "ctx", cache_dir=cache)
    assert r.exported and any(n.startswith("fp32 export") and "content hash mismatch" in n for n in r.cache_repaired)
