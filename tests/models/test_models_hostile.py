"""Issue 9, pipeline side: what the pipeline ships must be right even when a model, a factory,
the cache or the user's environment misbehaves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import servedmodel.models as models
from conftest import ROOT, cache_key_of, cli_json, run_cli

HOSTILE = Path(__file__).resolve().parent / "factories" / "hostile.py"


def ref(factory: str) -> str:
    return f"{HOSTILE}:{factory}"


def test_batch_sizes_to_verify_reach_the_max():
    from servedmodel.models.verify import batch_sizes_to_verify

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

    from servedmodel.models.verify import check_rows_independent, reference

    monkeypatch.setattr("servedmodel.models.verify.ROW_PROBES", probes)
    spec_ = importlib.util.spec_from_file_location("hostile_factories", HOSTILE)
    assert spec_ is not None and spec_.loader is not None
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
    from servedmodel.models.cache import entry_dir

    return entry_dir(cache, cache_key_of(ref(factory), compression, cache_dir=cache))


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
    # Same sizes of the model file (the gzip'd model layer, a size too, differs with the weights).
    assert a.version != b.version
    assert (a.sizes["fp32_bytes"], a.sizes["final_bytes"]) == (b.sizes["fp32_bytes"], b.sizes["final_bytes"])
    return cache, a, b


def test_flipped_byte_in_a_cached_model_is_rebuilt(tiny_cache, tmp_path):

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
    from servedmodel.models.cache import export_dir

    cache, _, _ = tiny_cache
    exported = export_dir(cache, cache_key_of(ref("tiny_a"), "export", cache_dir=cache, device="any",
                                              export_only=True)) / "model.onnx"
    _flip_byte(exported)
    r = models.build(ref("tiny_a"), "fp16", tmp_path / "ctx", cache_dir=cache)
    assert r.exported and any(n.startswith("fp32 export") and "content hash mismatch" in n for n in r.cache_repaired)


# ---- interrupted builds (item 10) ---------------------------------------------------------

def _leftovers(*folders: Path) -> list[str]:
    """Temporary folders the pipeline makes (hidden staging next to --out, .tmp- in the cache,
    servedmodel-* under TMPDIR), anywhere under `folders`."""
    found = []
    for folder in folders:
        for p in folder.rglob("*") if folder.exists() else ():
            if p.is_dir() and p.name.startswith((".", "servedmodel-")):  # files of other tools are not ours
                found.append(str(p.relative_to(folder)))
    return sorted(found)


def _start_cli(args: list[str], cache: Path, tmpdir: Path, pause: str | None = None):
    import os
    import subprocess
    import sys


    env = {**os.environ, "SERVEDMODEL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmpdir)}
    env.pop("SERVEDMODEL_DEBUG", None)
    env.pop("SERVEDMODEL_TEST_PAUSE", None)
    if pause:
        env["SERVEDMODEL_TEST_PAUSE"] = f"{pause}:60"
    # A session of its own, so that a test can send SIGINT to the whole group as Ctrl-C does.
    return subprocess.Popen([sys.executable, "-m", "models", "build", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_line(proc, words: str, timeout: float = 120) -> list[str]:
    """stderr lines up to the first containing `words` (read on a thread: bounded in time)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen: list[str] = []
    while True:
        line = lines.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"the build ended before {words!r}: {''.join(seen)}")
        seen.append(line)
        if words in line:
            proc._lines = lines  # the rest of stderr, for the caller
            return seen


def _rest(proc) -> str:
    out = []
    while (line := proc._lines.get(timeout=60)) is not None:
        out.append(line)
    return "".join(out)


def _interrupt(proc, group: bool) -> None:
    import os
    import signal

    if group:  # what Ctrl-C in a terminal does: every process of the foreground group
        os.killpg(proc.pid, signal.SIGINT)
    else:  # kill -INT on the CLI's pid only
        proc.send_signal(signal.SIGINT)


@pytest.fixture()
def sigint_cache(tiny_cache, tmp_path):
    """A cache of its own holding tiny_a's fp32 export (so a build skips the export)."""
    import shutil

    cache, a, _ = tiny_cache
    own = tmp_path / "cache"
    shutil.copytree(cache / "exports", own / "exports")
    return own, a


@pytest.mark.slow
@pytest.mark.parametrize("point, old_context, group", [
    ("package-staged", False, False),   # the new context is staged next to --out
    ("package-swap", True, True),       # the old context is moved aside, the new not yet in place
    ("cache-staged", False, False),     # the context is in place, its cache entry staged
])
def test_sigint_during_packaging_cleans_up_and_exits_130(sigint_cache, tmp_path, point, old_context, group):
    import filecmp

    cache, a = sigint_cache
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmpdir.mkdir()
    out = work / "ctx"
    if old_context:
        import shutil

        shutil.copytree(a.context_dir, out)
    proc = _start_cli(["--model", ref("tiny_a"), "--compression", "fp16", "--out", str(out), "--json"],
                      cache, tmpdir, pause=point)
    try:
        _wait_for_line(proc, f"paused at {point}")
        assert _leftovers(cache if point == "cache-staged" else work)  # something is staged
        _interrupt(proc, group)
        rc = proc.wait(timeout=60)
        stderr = _rest(proc)
    finally:
        proc.kill()
    assert rc == 130, stderr
    assert stderr.strip().splitlines()[-1].endswith("interrupted"), stderr
    body = json.loads(proc.stdout.read())
    assert body["ok"] is False and body["exit_code"] == 130 and body["step"] == "interrupted"
    assert _leftovers(work, cache, tmpdir) == []
    if old_context:  # the old context is back, untouched
        assert sorted(p.name for p in work.iterdir()) == ["ctx"]
        assert filecmp.cmp(out / "model/model.onnx", a.context_dir / "model/model.onnx", shallow=False)
    elif point == "package-staged":
        assert list(work.iterdir()) == []
    else:  # interrupted after the context was published: it is complete
        assert (out / "model/manifest.json").is_file()


@pytest.mark.slow
def test_sigint_at_varied_times_always_exits_130(tmp_path):
    """Ctrl-C during load and export, once or twice in a row: always 130, nothing left behind."""
    import time

    for i, (delay, group, twice) in enumerate([(0.0, True, False), (0.8, False, True), (1.5, True, True)]):
        work, tmpdir, cache = tmp_path / f"work{i}", tmp_path / f"tmp{i}", tmp_path / f"cache{i}"
        work.mkdir()
        tmpdir.mkdir()
        proc = _start_cli(["--model", ref("tiny_a"), "--out", str(work / "ctx")], cache, tmpdir)
        try:
            _wait_for_line(proc, "load: importing")
            time.sleep(delay)
            _interrupt(proc, group)
            if twice:
                time.sleep(0.05)
                _interrupt(proc, group)
            rc = proc.wait(timeout=60)
            stderr = _rest(proc)
        finally:
            proc.kill()
        assert rc == 130, (delay, stderr)
        assert "interrupted" in stderr and "Traceback" not in stderr, stderr
        assert _leftovers(work, cache, tmpdir) == [], (delay, _leftovers(work, cache, tmpdir))
        assert list(work.iterdir()) == []


# ---- smaller ones (item 11) ---------------------------------------------------------------

def test_legitimate_infinities_are_accepted(tmp_path):
    """log(relu) is -inf and 1/relu +inf where the ReLU is 0: torch and onnxruntime agree."""
    r = models.build(ref("infinite"), "none", tmp_path / "ctx", use_cache=False)
    import numpy as np
    import onnxruntime as ort

    assert r.manifest["parity"]["passed"]
    sess = ort.InferenceSession(str(tmp_path / "ctx/model/model.onnx"), providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(0).random((8, 6)) - 0.5).astype(np.float32)
    log, inverse = (np.asarray(o) for o in sess.run(None, {"x": x}))
    assert np.isneginf(log).any() and np.isposinf(inverse).any()  # the model really makes infinities


def test_infinities_that_torch_does_not_have_are_refused():
    """The rule itself: the same infinities pass; an inf where torch is finite, the other sign,
    or a NaN where torch has none fail (verify reports them per output)."""
    import numpy as np

    from servedmodel.models.verify import _nonfinite_disagree

    torch_out = np.array([1.0, np.inf, -np.inf, np.nan])
    assert not _nonfinite_disagree(torch_out.copy(), torch_out).any()
    for bad in ([np.inf, np.inf, -np.inf, np.nan], [1.0, -np.inf, -np.inf, np.nan], [1.0, np.inf, -np.inf, 0.0],
                [np.nan, np.inf, -np.inf, np.nan]):
        assert _nonfinite_disagree(np.array(bad), torch_out).sum() == 1, bad


def _as_unprivileged() -> list[str]:
    """A command prefix under which file modes hold: root ignores them unless it drops
    CAP_DAC_OVERRIDE (setpriv, util-linux)."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_out_in_a_read_only_folder_exits_8_before_exporting(cache_dir, tmp_path):
    import os
    import subprocess
    import sys


    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        env = {**os.environ, "SERVEDMODEL_CACHE": str(cache_dir)}
        proc = subprocess.run([*_as_unprivileged(), sys.executable, "-m", "models", "build", "--model", ref("tiny_a"),
                               "--out", str(ro / "ctx"), "--json"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 8, proc.stderr
    body = json.loads(proc.stdout)
    assert body["step"] == "package" and "Permission denied" in body["error"] and str(ro) in body["error"]
    assert "load:" not in proc.stderr  # refused before the factory was even imported
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("inside", ["serving", "models/zoo"])
def test_out_inside_a_folder_the_context_copies_is_refused(cache_dir, inside):
    import shutil
    import uuid


    out = ROOT / inside / f"ctx-test-{uuid.uuid4().hex[:8]}"
    try:
        proc = run_cli("build", "--model", "mnist-mlp", "--out", str(out), "--json", cache_dir=cache_dir)
        assert proc.returncode == 8, proc.stderr
        body = json.loads(proc.stdout)
        assert body["step"] == "package" and f"is inside {inside.split('/')[0]}/" in body["error"]
        assert "Choose an --out outside serving/ and models/" in body["error"]
        assert not out.exists()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_factory_prints_do_not_break_json(cache_dir, tmp_path):

    proc = run_cli("build", "--model", ref("prints"), "--out", str(tmp_path / "ctx"), "--json", cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert cli_json(proc)["ok"] is True  # stdout is one JSON line, nothing else
    for text in ("hello from the factory", "more text", "raw bytes on fd 1"):
        assert text in proc.stderr


def test_factory_calling_os_exit_0_is_not_a_success(cache_dir, tmp_path):

    proc = run_cli("build", "--model", ref("exits_zero"), "--out", str(tmp_path / "ctx"), "--json",
                   cache_dir=cache_dir)
    assert proc.returncode == 3, proc.stderr
    body = cli_json(proc)
    assert body["ok"] is False and body["step"] == "factory" and body["exit_code"] == 3
    assert "exited with code 0 during the load step without finishing" in body["error"]
    assert f"error: {body['error']}" in proc.stderr
    assert not (tmp_path / "ctx").exists() and list(tmp_path.iterdir()) == []
