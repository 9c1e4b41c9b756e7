"""In-process units: the datatype codec (table and inverse, round trips), settings precedence,
the cgroup CPU limit."""
from __future__ import annotations

import time

import numpy as np
import pytest

from servedmodel.serving import codec
from servedmodel.serving.errors import ServingError, StartupError
from servedmodel.serving.manifest import load_manifest
from servedmodel.serving.model import SPIN_MIN_ITEM_SECONDS
from servedmodel.serving.settings import cgroup_cpu_limit, load_settings


def test_codec_table_and_inverse_round_trip():
    for name, dtype in codec.V2_TO_NUMPY.items():
        if dtype is not None:
            assert codec.NUMPY_TO_V2[dtype] == name
    assert set(codec.ORT_TO_V2.values()) == set(codec.V2_TO_NUMPY)


@pytest.mark.parametrize("datatype", [n for n, d in codec.V2_TO_NUMPY.items()
                                      if d is not None and n not in ("FP16",)])
def test_json_and_binary_round_trip(datatype):
    dtype = codec.V2_TO_NUMPY[datatype]
    assert dtype is not None
    values = np.array([[0, 1, 1, 0]], dtype=dtype) if datatype == "BOOL" else (
        np.arange(8, dtype=dtype).reshape(2, 4))
    encoded = codec.encode_json(values)
    data = encoded.tolist() if isinstance(encoded, np.ndarray) else encoded
    back = codec.decode_json("t", data, datatype, dtype, list(values.shape))
    np.testing.assert_array_equal(back, values)
    blob = values.tobytes()
    back = codec.decode_binary("t", blob, 0, len(blob), dtype, list(values.shape))
    np.testing.assert_array_equal(back, values)


def test_nonfinite_outputs_become_strings_numpy_reads_back():
    arr = np.array([np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    out = codec.encode_json(arr)
    assert out == ["NaN", "Infinity", "-Infinity", 1.5]
    np.testing.assert_array_equal(np.array(out, dtype=np.float32), arr)


@pytest.mark.parametrize("data,datatype,words", [
    ([1, "2"], "FP32", "must be numbers"), ([1.5, 2], "INT32", "must be integers"),
    ([1, 2], "BOOL", "must be booleans"), ([300, 1], "UINT8", "out of range"),
    ([[1], [2, 3]], "FP32", "rectangular"), ([None, 1], "FP32", "must be numbers"),
])
def test_decode_json_is_strict(data, datatype, words):
    dtype = codec.V2_TO_NUMPY[datatype]
    assert dtype is not None
    with pytest.raises(ServingError) as e:
        codec.decode_json("t", data, datatype, dtype, [1, 2])
    assert e.value.status == 400 and words in e.value.message


def test_settings_precedence_and_defaults(tmp_path):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from contexts import write_context

    ctx = write_context(tmp_path / "c", "mlp", max_batch_size=16, max_queue_delay_ms=3.0)
    m = load_manifest(ctx)
    s = load_settings(m, {}, {})
    b = s.batching
    assert (b.max_batch_size, b.max_queue_delay_ms, b.max_queue_size) == (16, 3.0, 1024)
    assert b.queue_timeout_ms == 5000.0
    assert s.max_body_bytes == 64 * 1024 * 1024 and s.drain_seconds == 20.0
    assert s.intra_op_threads == cgroup_cpu_limit()
    s = load_settings(m, {"port": 9000}, {"SERVEDMODEL_PORT": "9100",
                                          "SERVEDMODEL_MAX_BATCH_SIZE": "8",
                                          "SERVEDMODEL_AUTH_TOKEN": "tok"})
    assert (s.port, s.batching.max_batch_size, s.batching.max_queue_size) == (9000, 8, 1024)
    assert "tok" not in repr(s)
    with pytest.raises(StartupError) as e:
        load_settings(m, {}, {"SERVEDMODEL_PORT": "http", "SERVEDMODEL_DEVICE": "tpu"})
    assert "SERVEDMODEL_PORT" in str(e.value) and "SERVEDMODEL_DEVICE" in str(e.value)


def test_cgroup_limit_is_at_least_one_and_at_most_affinity():
    import os
    assert 1 <= cgroup_cpu_limit() <= len(os.sched_getaffinity(0))


def test_serving_never_imports_torch_pulumi_or_models():
    import subprocess
    import sys
    code = ("import sys, serving, serving.app, serving.model, serving.server, serving.__main__; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pulumi', 'models')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_warm_up_picks_preferred_batch_and_inline_mode(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from contexts import write_context
    from servedmodel.serving.model import OnnxModel

    def warmed(kind, **kw):
        ctx = write_context(tmp_path / kind, kind, **kw)
        manifest = load_manifest(ctx)
        model = OnnxModel(manifest, load_settings(manifest, {"context": ctx}, {}))
        model.load()
        assert not model.ready
        model.warm_up()
        assert model.ready
        return model

    tiny = warmed("mlp", max_batch_size=32, warmup=(1, 8, 32))
    assert set(tiny.warmup_items_per_second) == {1, 8, 32}
    assert tiny.preferred_batch_size in (1, 8, 32) and tiny.run_inline   # microseconds a batch
    slow = warmed("slow", max_batch_size=4, warmup=(1, 4))
    assert slow.preferred_batch_size in (1, 4) and not slow.run_inline   # tens of ms a batch
    # Spinning (auto): on for a model that takes milliseconds an item, off for an inline one
    # and for one that runs in the model thread but takes well under SPIN_MIN_ITEM_SECONDS an
    # item at its preferred batch size (its many requests keep the event loop busy).
    brisk = warmed("brisk", max_batch_size=32, warmup=(1, 32))
    brisk_item = 1 / brisk.warmup_items_per_second[brisk.preferred_batch_size]
    assert not brisk.run_inline and brisk_item < SPIN_MIN_ITEM_SECONDS / 2, brisk_item
    # wide_model: ~16 ms a row on 2 CPUs, far above the threshold ("slow" is ~4 ms).
    heavy = warmed("wide", max_batch_size=4, warmup=(1, 4))
    heavy_item = 1 / heavy.warmup_items_per_second[heavy.preferred_batch_size]
    assert heavy_item > SPIN_MIN_ITEM_SECONDS, heavy_item
    assert heavy.spinning and not tiny.spinning and not brisk.spinning

    def spins(model) -> str:
        return model.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning")

    assert (spins(heavy), spins(tiny), spins(brisk)) == ("1", "0", "0")


def test_intra_op_spinning_setting(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from contexts import write_context

    m = load_manifest(write_context(tmp_path / "c", "mlp"))
    assert load_settings(m, {}, {}).intra_op_spinning is None          # auto
    for raw, want in (("auto", None), ("1", True), ("on", True), ("0", False), ("false", False)):
        assert load_settings(m, {}, {"SERVEDMODEL_INTRA_OP_SPINNING": raw}).intra_op_spinning \
            is want
    with pytest.raises(StartupError) as e:
        load_settings(m, {}, {"SERVEDMODEL_INTRA_OP_SPINNING": "sometimes"})
    assert "SERVEDMODEL_INTRA_OP_SPINNING" in str(e.value)


def test_warm_up_times_sizes_in_interleaved_rounds(tmp_path):
    """The preferred batch comes from the median of at least WARMUP_MIN_ROUNDS interleaved
    runs per size (one or two runs made it flip between starts)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from contexts import write_context
    from servedmodel.serving import model as model_module

    ctx = write_context(tmp_path / "c", "mlp", max_batch_size=32, warmup=(1, 8, 32))
    manifest = load_manifest(ctx)
    m = model_module.OnnxModel(manifest, load_settings(manifest, {"context": ctx}, {}))
    m.load()
    calls: list[int] = []
    real = m.predict

    def counting(feeds):
        calls.append(len(feeds["input"]))
        return real(feeds)

    m.predict = counting
    m.warm_up()
    timed = calls[3:]                          # after one checked run per size
    assert timed[:6] == [1, 8, 32, 1, 8, 32]   # interleaved
    for b in (1, 8, 32):
        assert timed.count(b) >= model_module.WARMUP_MIN_ROUNDS


def test_wait_estimate_uses_batch_times_per_size():
    """The queue-time estimate packs queued rows into batches of the preferred size at the
    time measured for each size (interpolated between sizes, proportional past the largest)."""
    from servedmodel.serving.batcher import Batcher
    from servedmodel.serving.metrics import Metrics
    from servedmodel.serving.settings import Batching

    # No model: only the estimates are asked for, nothing is predicted.
    b = Batcher(object(), Batching(max_batch_size=32, queue_timeout_ms=1000.0),  # pyright: ignore[reportArgumentType]
                Metrics("m", "v"))
    try:
        assert b.estimated_wait() is None                 # nothing measured: no estimate
        b.prefer(32, items_per_second={1: 100.0, 8: 400.0, 32: 800.0})   # 10, 20, 40 ms
        assert b.batch_time(1) == pytest.approx(0.010) and b.batch_time(32) == pytest.approx(0.04)
        assert b.batch_time(20) == pytest.approx(0.030)   # halfway between 8 and 32
        assert b.batch_time(64) == pytest.approx(0.080)
        b.queued_rows = 70                                # two full batches and 6 rows
        assert b.estimated_wait() == pytest.approx(2 * 0.040 + (b.batch_time(6) or 0.0))
    finally:
        b._executor.shutdown()


class _RecordingModel:
    """Doubles its input; records the rows of every batch it runs."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, feeds):
        self.batches.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}


class _PacedModel(_RecordingModel):
    """_RecordingModel whose every batch takes `seconds` (as a model of minilm's pace)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def predict(self, feeds):
        time.sleep(self.seconds)
        return super().predict(feeds)


def test_a_batch_waits_briefly_for_the_clients_of_the_last_one():
    """8 closed-loop clients of a model whose batch takes 60 ms, back 0.3 to 1.7 ms after their
    answers: the batches stay at 8 rows. Without the wait for returning clients, the first
    client back starts a batch alone and the clients split into two batches that take turns."""
    import asyncio

    from servedmodel.serving.batcher import Batcher
    from servedmodel.serving.metrics import Metrics
    from servedmodel.serving.settings import Batching

    async def main():
        model = _PacedModel(0.06)
        batcher = Batcher(model, Batching(max_batch_size=32, max_queue_delay_ms=10.0,
                                          queue_timeout_ms=10_000.0), Metrics("m", "v"))
        batcher.start()

        async def client(i: int):
            x = np.full((1, 1), i, np.float32)
            for _ in range(6):
                out = await batcher.submit({"x": x}, 1, ("x", (1,)))
                assert out["y"].tolist() == [[2.0 * i]]
                await asyncio.sleep(0.0003 + 0.0002 * i)     # back 0.3-1.7 ms later
        try:
            await asyncio.gather(*(client(i) for i in range(8)))
        finally:
            await batcher.stop()
        return model.batches

    batches = asyncio.run(main())
    assert sum(batches) == 48
    assert sorted(batches)[len(batches) // 2] == 8, batches


def test_the_wait_for_returning_clients_is_bounded():
    """No wait once as many rows came as the last batch had (a lone client never waits), and
    never past RETURN_WAIT_SHARE of the last batch's run time or the queue delay."""
    from servedmodel.serving.batcher import RETURN_WAIT_SHARE, Batcher
    from servedmodel.serving.metrics import Metrics
    from servedmodel.serving.settings import Batching

    batcher = Batcher(_RecordingModel(), Batching(max_batch_size=32, max_queue_delay_ms=2.0),
                      Metrics("m", "v"))
    batcher.last_rows, batcher.last_seconds, batcher.last_done = 1, 0.04, 100.0
    batcher.rows_since = 1                      # c=1: its one client is back
    assert batcher.return_wait_until() == 0.0
    batcher.last_rows, batcher.rows_since = 8, 3
    assert batcher.return_wait_until() == 100.0 + RETURN_WAIT_SHARE * 0.04
    batcher.last_seconds = 1.0                  # 5% of 1 s is over the 2 ms queue delay
    assert batcher.return_wait_until() == 100.0 + 0.002
    batcher._executor.shutdown()


def test_a_run_larger_than_the_warm_up_gives_its_memory_back(tmp_path):
    """A run bigger than any warm-up run shrinks onnxruntime's CPU arena (its intermediate
    tensors), and `release_peak_memory`, called by the server when idle, frees what the
    outputs held. The same run without the shrink, on the same session, is the control."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from contexts import write_context
    from servedmodel.serving.hooks import PeakMemory
    from servedmodel.serving.model import OnnxModel

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20

    ctx = write_context(tmp_path / "c", "peak", max_batch_size=8, warmup=(1, 8))
    manifest = load_manifest(ctx)
    model = OnnxModel(manifest, load_settings(manifest, {"context": ctx}, {}))
    assert isinstance(model, PeakMemory)
    model.load()
    model.warm_up()
    mib = 2 ** 20 // 4
    big = {"x": np.full((1, 128 * mib), 2.0, dtype=np.float32)}        # 128 MiB a tensor
    before = rss_mib()
    out = model.predict(big)
    assert out["y"].shape == (1, 128 * mib) and model.holds_peak_memory
    del out
    after_run = rss_mib() - before            # the output's arena region, until released
    model.release_peak_memory()
    released = rss_mib() - before
    assert not model.holds_peak_memory
    model.session.run(None, big)              # the control: no shrink keeps output and h
    kept_without = rss_mib() - before
    assert released < 16, f"{released:.0f} MiB kept after release_peak_memory"
    assert after_run > 100 and kept_without > 200, (after_run, kept_without)

