"""The model runtime: a few hooks (load, warm_up, ready, predict, unload) around one
onnxruntime session. The server only talks to these hooks, so tests can pass another object
with the same shape to `create_app`."""
from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import cast

import numpy as np

from .codec import ORT_TO_V2, V2_TO_NUMPY
from .errors import StartupError
from .manifest import Manifest
from .settings import Settings

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Size of dynamic non-batch dimensions in warm-up inputs (e.g. a typical sentence of tokens).
WARMUP_DIM = 64
#: A batch faster than this runs on the event loop thread instead of the model thread.
INLINE_BELOW_SECONDS = 0.0005
#: Intra-op threads spin (auto) only for a model that takes at least this long per item at
#: its preferred batch size. A faster model, kept busy, makes the event loop answer more than
#: 500 requests a second, and spinning threads take the CPU the loop needs for that
#: (resnet-tiny, ~0.4 ms an item on 2 CPUs: +7-45% req/s without spinning in bench/serve.py;
#: minilm, ~11 ms an item: ~10% fewer req/s without it).
SPIN_MIN_ITEM_SECONDS = 0.002
#: Warm-up timing: interleaved rounds over the batch sizes, at least WARMUP_MIN_ROUNDS and
#: WARMUP_MIN_SECONDS, at most WARMUP_MAX_ROUNDS, and stopping after WARMUP_MAX_SECONDS once 3
#: rounds are done (minilm: ~0.5 s a round on 2 CPUs, so its start grows by ~0.5 s at most).
WARMUP_MIN_ROUNDS = 7
WARMUP_MIN_SECONDS = 0.3
WARMUP_MAX_ROUNDS = 31
WARMUP_MAX_SECONDS = 1.5


def execution_providers(device: str, gpu_mem_limit: int | None = None) -> list:
    """The providers list a session is created with, in onnxruntime's form (a name, or a name
    and its options, the values as strings), most preferred first.

    cuda: the CUDA provider, then the CPU provider for the operators CUDA lacks. With a memory
    cap, the CUDA provider's arena may hold at most `gpu_mem_limit` bytes and grows by what
    each allocation asks (`kSameAsRequested`): the default doubling (`kNextPowerOfTwo`) would
    reach the cap in big steps and hold memory it never uses, which on a time-sliced GPU is
    memory the other models' servers were promised. The cap bounds the arena (weights,
    activations, workspaces), not the CUDA context and library handles each process also holds."""
    if device != "cuda":
        return [CPU]
    options: dict[str, str] = {}
    if gpu_mem_limit is not None:
        options = {"gpu_mem_limit": str(gpu_mem_limit), "arena_extend_strategy": "kSameAsRequested"}
    return [(CUDA, options), CPU]


def options_problem(wanted: list, in_force: dict[str, dict[str, str]]) -> str | None:
    """What differs between the options asked for (`execution_providers`) and those a session
    runs with (`InferenceSession.get_provider_options()`); None when every one is in force."""
    for provider in wanted:
        if isinstance(provider, str):
            continue
        name, options = provider
        actual = in_force.get(name, {})
        wrong = {k: actual.get(k) for k, v in options.items() if actual.get(k) != v}
        if wrong:
            return (f"{name} runs with {wrong}, not the {options} asked for "
                    f"(SERVEDMODEL_GPU_MEM_LIMIT)")
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class OnnxModel:
    """One ONNX model served from a build context."""

    def __init__(self, manifest: Manifest, settings: Settings) -> None:
        self.manifest = manifest
        self.settings = settings
        self.session = None
        self.providers: list[str] = []
        self.warm = False
        self.batching = settings.batching
        self.preferred_batch_size = max(1, self.batching.max_batch_size)
        self.warmup_items_per_second: dict[int, float] = {}
        #: each input's dimension names (None where fixed or unnamed), for the validator
        self.input_dim_names: dict[str, tuple[str | None, ...]] = {}
        #: the most elements a warm-up batch fed; a bigger run gives its arena memory back
        self._warm_elements = 0
        self.holds_peak_memory = False
        self._shrink = None
        #: True when a full preferred batch runs in well under a millisecond: the batcher then
        #: runs it on the event loop, saving the hand-off to the model thread (which can wait
        #: up to the interpreter's GIL switch interval for the event loop to let go).
        self.run_inline = False
        #: Whether the session's intra-op threads spin between operators (settings, or auto).
        self.spinning = False
        #: seconds the decryption of an encrypted model took at start (0.0: not encrypted)
        self.decrypt_seconds = 0.0
        self._source: bytes | str = ""
        self._output_names = [t.name for t in manifest.outputs]

    # -- hooks ------------------------------------------------------------------------------
    def load(self) -> None:
        """Check the file and its sha256, create the session with an explicit providers list and
        check that the session matches the manifest. Raises StartupError with one clear line."""
        m, s = self.manifest, self.settings
        for t in m.inputs + m.outputs:
            if V2_TO_NUMPY[t.datatype] is None:
                raise StartupError(f"tensor '{t.name}' has datatype {t.datatype}, which this "
                                   f"server does not serve (numeric datatypes except BF16 only)")
        path = Path(s.context) / "model" / m.model_file
        if "encryption" in m.raw:
            # Decrypted in memory, checked against the manifest's sha256, loaded from bytes:
            # the plaintext never touches a disk (serving/sealed.py).
            from .sealed import open_model

            t0 = time.perf_counter()
            self._source: bytes | str = open_model(s.context, m.raw, s.model_name or m.name,
                                                   s.model_key_file)
            self.decrypt_seconds = time.perf_counter() - t0
        else:
            if not path.is_file():
                raise StartupError(f"model file not found: {path}")
            digest = sha256_of(path)
            if digest != m.sha256:
                raise StartupError(f"sha256 mismatch for {path}: manifest says {m.sha256}, "
                                   f"file is {digest}")
            self._source = str(path)
        # Only now: onnxruntime may say things on stderr when it loads (telemetry on a read-only
        # root), and a refused model must stop with its one line alone.
        import onnxruntime as ort

        if s.device == "cuda":
            if CUDA not in ort.get_available_providers():
                raise StartupError(f"device=cuda but onnxruntime has no {CUDA} (available: "
                                   f"{', '.join(ort.get_available_providers())}); install "
                                   f"onnxruntime-gpu or set SERVEDMODEL_DEVICE=cpu")
        self._path = path
        self._providers_wanted = execution_providers(s.device, s.gpu_mem_limit)
        spinning = s.intra_op_spinning is not False
        session = self._create_session(spinning)
        self._check_signature(session)
        self.providers = list(session.get_providers())
        if s.device == "cuda" and (not self.providers or self.providers[0] != CUDA):
            raise StartupError(f"device=cuda but the session runs on {self.providers}")
        if s.device == "cuda":
            # The options the provider really took (onnxruntime reports every option it runs with).
            problem = options_problem(self._providers_wanted, session.get_provider_options())
            if problem:
                raise StartupError(problem)
        self.session = session
        self.input_dim_names = {
            a.name: tuple(d if isinstance(d, str) and d else None for d in a.shape)
            for a in session.get_inputs()}

    def _create_session(self, spinning: bool):
        import onnxruntime as ort

        s, path = self.settings, self._path
        source = self._source        # the file, or an encrypted model's plaintext bytes
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = s.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning: between the operators of one run, the pool threads busy-wait instead of
        # sleeping and being woken again hundreds of times per inference of a transformer
        # (minilm batch 1 on 2 cores: ~14-15 ms instead of ~17-18 ms; in the server, medians
        # of alternating runs on a noisy VM: c=1 ~+10% req/s, c=8 ~+4%, c=32 within noise).
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if spinning else "0")
        # ... but they stop as soon as a run returns, so they do not take the CPU the event
        # loop needs between batches.
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        # Fatal only: a run the caller's inputs make fail would log a line per request (a
        # flood, and a blocked thread on a full stderr pipe); the batcher logs failures itself,
        # at most one line per FAILURE_LOG_SECONDS.
        opts.log_severity_level = 4
        self.spinning = spinning
        try:
            return ort.InferenceSession(source, sess_options=opts,
                                        providers=self._providers_wanted)
        except Exception as e:  # onnxruntime raises several types for a corrupt file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StartupError(f"model {path} cannot be loaded by onnxruntime: {first}") from None

    def _check_signature(self, session) -> None:
        problems = []
        for kind, specs, args in (("input", self.manifest.inputs, session.get_inputs()),
                                  ("output", self.manifest.outputs, session.get_outputs())):
            actual = {a.name: a for a in args}
            for t in specs:
                a = actual.get(t.name)
                if a is None:
                    problems.append(f"manifest {kind} '{t.name}' is not in the model "
                                    f"({', '.join(actual)})")
                elif ORT_TO_V2.get(a.type) != t.datatype:
                    problems.append(f"{kind} '{t.name}' is {a.type} in the model, "
                                    f"{t.datatype} in the manifest")
                elif len(a.shape) != len(t.shape):
                    problems.append(f"{kind} '{t.name}' has rank {len(a.shape)} in the model, "
                                    f"{len(t.shape)} in the manifest")
            if kind == "input":
                missing = set(actual) - {t.name for t in specs}
                if missing:
                    problems.append(f"model inputs {sorted(missing)} are not in the manifest")
        if problems:
            raise StartupError("model and manifest disagree: " + "; ".join(problems))

    def example_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """Inputs for one warm-up run: `batch` rows, other dynamic dimensions WARMUP_DIM."""
        feeds = {}
        for t in self.manifest.inputs:
            shape = [d if d >= 0 else WARMUP_DIM for d in t.shape]
            if self.batching.enabled:
                shape[0] = batch
            dtype = V2_TO_NUMPY[t.datatype]
            feeds[t.name] = np.ones(shape, dtype=dtype)
        return feeds

    def warm_up(self) -> None:
        """Run the model once per expected batch shape (readiness waits for this), and time
        each: on a few CPUs a big batch can be slower per item than a smaller one (minilm at 32
        vs 8 on 2 cores), so the batcher packs up to the fastest size (`preferred_batch_size`);
        bigger single requests up to max_batch_size still run."""
        mbs = self.batching.max_batch_size
        sizes = self.batching.warmup_batch_sizes
        feeds = {b: self.example_inputs(b) for b in sizes}
        for b in sizes:
            outs = self.predict(feeds[b])
            for t in self.manifest.outputs:
                if t.name not in outs:
                    raise StartupError(f"warm-up at batch {b} returned no output '{t.name}'")
        if mbs > 0:
            # Timed in interleaved rounds (every size once a round), so a burst of other work
            # on the machine slows all sizes alike, and by the median of the rounds: one or two
            # runs a size made the preferred size flip from one start to the next.
            times: dict[int, list[float]] = {b: [] for b in sizes}
            start = time.perf_counter()
            rounds = 0
            while rounds < WARMUP_MAX_ROUNDS:
                for b in sizes:
                    t0 = time.perf_counter()
                    self.predict(feeds[b])
                    times[b].append(time.perf_counter() - t0)
                rounds += 1
                elapsed = time.perf_counter() - start
                if (rounds >= WARMUP_MIN_ROUNDS and elapsed >= WARMUP_MIN_SECONDS) or (
                        rounds >= 3 and elapsed >= WARMUP_MAX_SECONDS):
                    break
            for b, ts in times.items():
                self.warmup_items_per_second[b] = b / statistics.median(ts)
        if mbs > 0:
            # The largest size wins unless a smaller one is clearly (>15%) faster per item:
            # bigger batches also save per-request overhead that this timing does not see.
            rates = self.warmup_items_per_second
            best = mbs
            for b in sorted(rates, reverse=True):
                if rates[b] > 1.15 * rates[best]:
                    best = b
            self.preferred_batch_size = best
            self.run_inline = best / rates[best] < INLINE_BELOW_SECONDS
            brisk = 1.0 / rates[best] < SPIN_MIN_ITEM_SECONDS
            if self.settings.intra_op_spinning is None and self.spinning and brisk:
                # Such a model, inline or not, shares the CPU with an event loop kept busy by
                # its many requests; spinning threads would take that CPU (SPIN_MIN_ITEM_SECONDS).
                self.session = self._create_session(False)
                for b in sizes:          # the new session's first run of each size, here
                    self.predict(feeds[b])
        assert self.session is not None  # made at load, replaced above, None only once unloaded
        if self.settings.device == "cuda" and self.session.get_providers()[0] != CUDA:
            raise StartupError("device=cuda but CUDAExecutionProvider is not active after warm-up")
        # No session is made after warm-up: an encrypted model's plaintext is let go (the
        # session holds the weights it needs).
        self._source = str(self._path)
        self.warm = True

    @property
    def ready(self) -> bool:
        if not self.warm or self.session is None:
            return False
        return self.settings.device != "cuda" or self.providers[:1] == [CUDA]

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (batched) inference. onnxruntime releases the GIL while it runs.

        A run bigger than any warm-up run (a peak) shrinks the CPU arena afterwards: the arena
        otherwise keeps its peak size for the life of the process (gigabytes after one large
        transformer request)."""
        session = self.session
        assert session is not None      # loaded, not unloaded
        elements = sum(a.size for a in feeds.values())
        if not self.warm:
            self._warm_elements = max(self._warm_elements, elements)
        elif elements > self._warm_elements:
            if self._shrink is None:
                import onnxruntime as ort

                self._shrink = ort.RunOptions()
                self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage",
                                                  "cpu:0")
            results = session.run(self._output_names, feeds, self._shrink)
            # The outputs are still ours when that run shrinks the arena: their memory stays
            # in it until a shrinking run after they are freed (release_peak_memory).
            self.holds_peak_memory = True
            return dict(zip(self._output_names, cast("list[np.ndarray]", results)))
        results = session.run(self._output_names, feeds)
        # Dense tensors: the model's outputs are checked against the manifest at load.
        return dict(zip(self._output_names, cast("list[np.ndarray]", results)))

    def release_peak_memory(self) -> None:
        """One batch-1 run with the arena shrink, once the peak run's outputs are gone (the
        server calls this when idle): the arena then frees their memory too. Measured on a
        128 MiB output: 132 MiB kept after the peak run, 4 MiB after this."""
        if not self.holds_peak_memory or self.session is None or self._shrink is None:
            return
        self.holds_peak_memory = False
        self.session.run(self._output_names, self.example_inputs(1), self._shrink)

    def unload(self) -> None:
        self.session = None
        self.warm = False
