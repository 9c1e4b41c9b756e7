"""Determinism and the cache: same inputs give the same bytes and version; an unchanged
rebuild does not export; a changed input does."""
from __future__ import annotations

import filecmp
import shutil
import time

import pytest

import servedmodel.models as models
from conftest import FACTORIES, cache_key_of, cli_json, run_cli


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def same_bytes(a, b) -> bool:
    files = tree(a)
    return files == tree(b) and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def test_two_builds_are_byte_identical(build_once, tmp_path):
    first = build_once("lenet", "int8")
    again = models.build("lenet", "int8", tmp_path / "other", use_cache=False)
    assert not again.cache_hit and again.exported
    assert again.version == first.version
    assert same_bytes(first.context_dir, again.context_dir)


@pytest.mark.slow
def test_two_processes_build_identical_contexts(cache_dir, tmp_path):
    """A second process, no cache, another folder: still the same bytes (no paths, no times)."""
    a = run_cli("build", "--model", f"{FACTORIES}:conv_net", "--compression", "int8", "--out",
                str(tmp_path / "a"), "--no-cache", "--json", cache_dir=cache_dir)
    b = run_cli("build", "--model", f"{FACTORIES}:conv_net", "--compression", "int8", "--out",
                str(tmp_path / "b" / "nested"), "--no-cache", "--json", cache_dir=cache_dir)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert cli_json(a)["version"] == cli_json(b)["version"]
    assert same_bytes(tmp_path / "a", tmp_path / "b" / "nested")


def test_unchanged_rebuild_is_a_cache_hit_without_export(build_once, cache_dir, tmp_path, monkeypatch):
    first = build_once("mnist-mlp", "int8")

    def no_export(*a, **kw):
        raise AssertionError("export ran on an unchanged rebuild")

    monkeypatch.setattr("servedmodel.models.export.export", no_export)
    t = time.perf_counter()
    r = models.build("mnist-mlp", "int8", tmp_path / "again", cache_dir=cache_dir)
    elapsed = time.perf_counter() - t
    assert r.cache_hit and not r.exported and r.version == first.version
    assert same_bytes(first.context_dir, r.context_dir)
    assert elapsed < 1.0, elapsed


def test_cli_cache_hit(build_once, cache_dir, tmp_path):
    first = build_once("mnist-mlp", "none")
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(tmp_path / "c"), "--json", cache_dir=cache_dir)
    out = cli_json(proc)
    assert out["cache_hit"] is True and out["exported"] is False and out["version"] == first.version
    assert "cache hit" in proc.stderr


def test_changed_factory_file_misses_the_cache(cache_dir, tmp_path):
    src = tmp_path / "mine.py"
    shutil.copy(FACTORIES, src)
    a = models.build(f"{src}:multi_io", "none", tmp_path / "a", cache_dir=cache_dir)
    b = models.build(f"{src}:multi_io", "none", tmp_path / "b", cache_dir=cache_dir)
    assert b.cache_hit
    src.write_text(src.read_text().replace("nn.Linear(12, 8)", "nn.Linear(12, 8, bias=False)"))
    c = models.build(f"{src}:multi_io", "none", tmp_path / "c", cache_dir=cache_dir)
    assert not c.cache_hit and c.exported and c.version != a.version


def test_other_compression_reuses_the_fp32_export(build_once, monkeypatch, tmp_path, cache_dir):
    build_once("resnet-tiny", "none")
    monkeypatch.setattr("servedmodel.models.export.export",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("exported")))
    r = models.build("resnet-tiny", "fp16", tmp_path / "fp16", cache_dir=cache_dir)
    assert not r.cache_hit and not r.exported and "export" not in r.steps
    assert r.manifest["parity"]["passed"]


def test_no_cache_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    models.build(f"{FACTORIES}:multi_io", "none", tmp_path / "ctx", cache_dir=cache, use_cache=False)
    assert not cache.exists()


def test_damaged_cache_entry_is_rebuilt(cache_dir, tmp_path):
    a = models.build(f"{FACTORIES}:multi_io", "fp16", tmp_path / "a", cache_dir=cache_dir)
    from servedmodel.models.cache import entry_dir

    entry = entry_dir(cache_dir, cache_key_of(f"{FACTORIES}:multi_io", "fp16", cache_dir=cache_dir))
    (entry / "context/model/model.onnx").write_bytes(b"truncated")
    b = models.build(f"{FACTORIES}:multi_io", "fp16", tmp_path / "b", cache_dir=cache_dir)
    assert not b.cache_hit and b.version == a.version
    assert same_bytes(a.context_dir, b.context_dir)


def test_unexpected_errors_are_build_errors(cache_dir, tmp_path, monkeypatch):

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr("servedmodel.models.verify.verify", broken)
    with pytest.raises(models.BuildError) as e:
        models.build(f"{FACTORIES}:multi_io", "none", tmp_path / "x", cache_dir=cache_dir, use_cache=False)
    assert e.value.step == "verify" and e.value.exit_code == 1 and "unexpected ValueError: boom" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_export_key_ignores_the_serving_side(monkeypatch, tmp_path):
    """A change to serving/ makes a new context (new version) but reuses the fp32 export."""
    import servedmodel.models.cache as cache
    from servedmodel.models.loader import parse_ref

    mref, spec = parse_ref("mnist-mlp"), "0" * 64  # any spec fingerprint: only serving/ varies
    build_key = cache.cache_key(mref, "none", "cpu", spec_digest=spec)
    export_key = cache.cache_key(mref, "export", "any", spec_digest=spec, export_only=True)
    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "app.py").write_text("# another server\n")
    monkeypatch.setattr(cache, "SERVING_DIR", serving)
    assert cache.cache_key(mref, "none", "cpu", spec_digest=spec) != build_key
    assert cache.cache_key(mref, "export", "any", spec_digest=spec, export_only=True) == export_key


def test_a_damaged_cached_artifact_is_made_again(tmp_path):
    """What a factory keeps with cached_bytes (digits-cnn's trained weights) becomes the model:
    bytes that are not the stored ones are made again, never served."""
    from servedmodel.models.cache import building_with, cached_bytes

    made: list[bytes] = []

    def make() -> bytes:
        made.append(b"weights-%d" % len(made))
        return made[-1]

    with building_with(tmp_path):
        first, reused = cached_bytes("trained", "k" * 40, make)
        assert not reused and cached_bytes("trained", "k" * 40, make) == (first, True)
        (artifact,) = (tmp_path / "trained").glob("*/artifact")
        artifact.write_bytes(b"weights-X")  # a flipped byte on disk
        again, reused = cached_bytes("trained", "k" * 40, make)
    assert not reused and again == b"weights-1" and len(made) == 2
