"""Every command and example in README.md and docs/ runs as written.

The shell blocks (```bash, ```sh, ```shell, ```console) and Python blocks (```python) of each
document run in order, in a fresh copy of the repository's tracked files (what a clone has), with
the project venv activated the way `source .venv/bin/activate` does it (its `bin/` first on PATH,
VIRTUAL_ENV set, no PYTHONPATH), a HOME of its own and a private, empty SERVEDMODEL_CACHE shared by
the documents.
A block that cannot run here says so in the Markdown, right before it, with a marker and a reason;
the grammar is in docsource.py. Nothing is substituted: a block that talks to 127.0.0.1:8080 gets
a server on 127.0.0.1:8080 (runs of this test on one machine take turns through a lock file).

`.venv` in the copy is the venv that runs this test (its entries linked), with its own
`.installed-stamp`, written once the venv is checked to hold every pin of requirements-dev.txt:
what `make` would have installed from a fresh clone, without reinstalling it here, so `make serve`
runs its real build and server.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docsource
import pytest
from docsource import ROOT, Block, Marker, MarkerError, parse_marker

BLOCK_TIMEOUT = 300       # seconds one block may take (a cold build of the tagger is ~40 s on 2 busy cores)
READY_TIMEOUT = 240       # seconds a server may take to answer ready (make serve builds first)
LOCK = Path(tempfile.gettempdir()) / "servedmodel-doc-commands.lock"
KUBECONFIG = "apiVersion: v1\nkind: Config\n"
# Documents whose blocks take long (a model trained and built): run with the `slow` tests.
SLOW = {"docs/pipeline.md"}


def command_blocks(path: Path) -> list[Block]:
    return [b for b in docsource.blocks(path) if b.kind != "other"]


# --- the checks on the Markdown itself (fast) ------------------------------------------------

def test_every_command_block_is_run_or_says_why_not() -> None:
    """Each shell and Python block has no marker (it runs) or a valid one; markers stand right
    before a block; an unlabelled block that starts with a command is labelled."""
    problems = []
    for doc in docsource.documents():
        fence_lines = {b.line - 1 for b in docsource.blocks(doc)}
        for block in docsource.blocks(doc):
            if block.kind == "other":
                first = block.text.lstrip().split("\n", 1)[0]
                if block.marker and docsource.looks_like_marker(block.marker):
                    problems.append(f"{block.where}: a marker on a ```{block.lang or '(unlabelled)'} block, "
                                    "which is never run")
                if not block.lang and first.startswith(docsource.COMMAND_WORDS):
                    problems.append(f"{block.where}: an unlabelled block that starts with a command: "
                                    "label it ```bash or ```python")
                continue
            try:
                parse_marker(block.marker)
            except MarkerError as e:
                problems.append(f"{block.where}: {e}")
        for n, line in docsource.prose_lines(doc):
            m = re.match(r"^\s*<!--\s*(.*?)\s*-->\s*$", line)
            if m and docsource.looks_like_marker(m[1]) and n not in fence_lines:
                problems.append(f"{docsource.rel(doc)}:{n}: the marker <!-- {m[1]} --> is not right before a block")
    assert problems == []


def test_file_listings_are_the_files() -> None:
    """A block marked `file: PATH` is that file, as committed."""
    listed = [(b, parse_marker(b.marker)) for doc in docsource.documents() for b in command_blocks(doc)
              if b.marker and b.marker.startswith("file:")]
    assert listed, "no file listings found: the marker parser or the docs changed"
    for block, marker in listed:
        assert block.text == (ROOT / marker.path).read_text(), f"{block.where} differs from {marker.path}"


def test_marker_grammar() -> None:
    assert parse_marker(None) == Marker("run")
    assert parse_marker("not run: needs an EKS cluster").reason == "needs an EKS cluster"
    assert parse_marker("run: in the background until 127.0.0.1:8080 is ready, 127.0.0.1:8081 listening") == \
        Marker("run", mode="background", addresses=(("127.0.0.1", 8080), ("127.0.0.1", 8081)))
    assert parse_marker("run: with mnist-mlp served at 127.0.0.1:8080") == \
        Marker("run", mode="served", model="mnist-mlp", addresses=(("127.0.0.1", 8080),))
    assert parse_marker("run: as a Pulumi program under the test's mocks").mode == "pulumi"
    for bad in ("not run:", "not run: cloud", "not run", "skip: slow", "run: sometimes", "file: no/such/file.py",
                "run: with mnist-mlp served somewhere"):
        with pytest.raises(MarkerError):
            parse_marker(bad)


# --- running the blocks ------------------------------------------------------------------------

def _pins(requirements: Path) -> Iterator[tuple[str, str]]:
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            yield from _pins(requirements.parent / line[2:].strip())
        elif "==" in line:
            name, version = line.split("==", 1)
            yield re.sub(r"\[.*\]", "", name).strip(), version.split(";", 1)[0].strip()


def _linked_venv(sandbox: Path) -> Path:
    """sandbox/.venv: the running venv's entries linked, and a stamp of its own once the venv holds
    every pin of requirements-dev.txt (what `make`'s stamp rule would have installed)."""
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        pytest.fail("the tests must run in the project venv (make test creates .venv)")
    missing = []
    for name, version in _pins(ROOT / "requirements-dev.txt"):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if (installed or "").split("+", 1)[0] != version:
            missing.append(f"{name}=={version} (installed: {installed})")
    if missing:
        pytest.fail(f"the venv {prefix} does not hold requirements-dev.txt's pins: {missing}; run make test")
    venv = sandbox / ".venv"
    venv.mkdir()
    for entry in prefix.iterdir():
        if entry.name != ".installed-stamp":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed-stamp").touch()
    return venv


def _copy_tracked_files(dest: Path) -> None:
    """What a clone holds: the tracked files and new ones not ignored, as they are in the working
    tree (symlinks kept); no venvs, builds or caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as buffer:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in filter(None, listed.decode().split("\0")):
                if os.path.lexists(ROOT / name):
                    tar.add(ROOT / name, arcname=name, recursive=False)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            tar.extractall(dest, filter="tar")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A private models.build cache, empty at first, shared by the documents."""
    return tmp_path_factory.mktemp("doc-cache")


@pytest.fixture
def port_lock() -> Iterator[None]:
    """Documents run on one machine take turns (other checkouts, xdist workers): the docs name
    fixed ports."""
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass
class Server:
    process: subprocess.Popen
    log: Path
    addresses: tuple[tuple[str, int], ...]
    model: str | None = None   # the model it was started for (None: started by a block)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Session:
    """One document's run: its sandbox, its environment, the servers its blocks left running."""
    sandbox: Path
    scratch: Path
    env: dict[str, str]
    servers: list[Server] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    def run(self, args: list[str], block: Block, stdin: str | None = None) -> None:
        result = subprocess.run(args, cwd=self.sandbox, env=self.env, input=stdin, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT, check=False)
        if result.returncode != 0:
            pytest.fail(f"{block.where}: the ```{block.lang} block failed (exit {result.returncode}); fix the "
                        "docs, or, if it needs what no test machine has, mark it (tests/docs/docsource.py):\n"
                        f"{block.text}\n--- stdout ---\n{result.stdout[-4000:]}\n"
                        f"--- stderr ---\n{result.stderr[-4000:]}")

    def script(self, block: Block) -> Path:
        text = block.text
        if block.lang == "console":  # the commands are the lines after a `$ ` prompt
            text = "".join(line[2:] + "\n" for line in text.splitlines() if line.startswith("$ "))
        suffix = "py" if block.kind == "python" else "sh"
        path = self.scratch / f"{docsource.rel(block.path).replace('/', '_')}-{block.line}.{suffix}"
        path.write_text(text)
        return path

    def execute(self, block: Block) -> None:
        if block.kind == "shell":
            self.run(["bash", "-e", "-o", "pipefail", str(self.script(block))], block)
        else:  # as typed into `python` in the repository root: the current directory first on sys.path
            self.run(["python", "-"], block, stdin=block.text)

    # servers

    def free(self, addresses: tuple[tuple[str, int], ...]) -> None:
        """Stop the servers of this document that hold one of these ports; wait for others'."""
        ports = {port for _, port in addresses}
        for server in [s for s in self.servers if {p for _, p in s.addresses} & ports]:
            server.stop()
            self.servers.remove(server)
        deadline = time.monotonic() + 60
        while busy := [f"{h}:{p}" for h, p in addresses if _listening(h, p)]:
            if time.monotonic() > deadline:
                pytest.fail(f"{', '.join(busy)} is taken by a process outside this test: the docs' commands need it")
            time.sleep(0.5)

    def start(self, args: list[str], addresses: tuple[tuple[str, int], ...], block: Block,
              model: str | None = None) -> Server:
        self.free(addresses)
        log = self.scratch / f"server-{len(list(self.scratch.glob('server-*')))}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(args, cwd=self.sandbox, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = Server(process, log, addresses, model)
        self.servers.append(server)
        (host, port), others = addresses[0], addresses[1:]
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"{block.where}: the server exited with {process.returncode} before it was ready:\n"
                            + "\n".join(server.log_lines()[-60:]))
            with contextlib.suppress(OSError):
                if _get(f"http://{host}:{port}/v2/health/ready")[0] == 200 and all(_listening(*a) for a in others):
                    return server
            if time.monotonic() > deadline:
                pytest.fail(f"{block.where}: {host}:{port} not ready within {READY_TIMEOUT} s:\n"
                            + "\n".join(server.log_lines()[-60:]))
            time.sleep(0.3)

    def served(self, model: str, address: tuple[str, int], block: Block) -> Server:
        """The server at `address`: one an earlier block left there, which must serve `model`, or
        one started here for `model`."""
        host, port = address
        for server in self.servers:
            if address in server.addresses and server.process.poll() is None:
                status, body = _get(f"http://{host}:{port}/v2/models/{model}")
                assert status == 200, (f"{block.where} talks to {model} at {host}:{port}, but the server an "
                                       f"earlier block started there answers {status}: {body[:300]!r}")
                return server
        context = self.scratch / f"served-{model}"
        self.run(["python", "-m", "models", "build", "--model", model, "--out", str(context)], block)
        return self.start(["python", "-m", "serving", "--context", str(context), "--host", host, "--port", str(port)],
                          (address,), block, model)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()


def _requests_answered_below_400(server: Server, since: int, block: Block) -> int:
    time.sleep(0.6)  # the access log is written every 0.25 s
    failed, count = [], 0
    for line in server.log_lines()[since:]:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "status" in record and "path" in record:
                count += 1
                if record["status"] >= 400:
                    failed.append(line)
    assert not failed, f"{block.where}: requests the block made were refused: {failed}"
    return count


PULUMI_RUNNER = """
import json, os, sys
from pathlib import Path
# The package from the copy's root (a program of your own has it installed), the mocks from tests/.
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests", "components")]
from pulumi_harness import run_file
program, kubeconfig = Path(sys.argv[1]), sys.argv[2]
run = run_file(program, "docs", "docs", {"docs:kubeconfig": kubeconfig}, {"docs:kubeconfig"})
print(json.dumps(run.counts()))
"""


def run_document(doc: Path, sandbox: Path, scratch: Path, cache: Path) -> Session:
    venv = _linked_venv(sandbox)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SERVEDMODEL_", "PYTHON", "VIRTUAL_ENV", "PULUMI_", "CONDA_"))}
    home = scratch / "home"  # what the docs write under ~ (a key file, caches) stays in the run
    home.mkdir()
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               SERVEDMODEL_CACHE=str(cache), HOME=str(home))
    session = Session(sandbox, scratch, env)
    try:
        for block in command_blocks(doc):
            marker = parse_marker(block.marker)
            if marker.action == "not run":
                session.not_run.append(f"{block.where}: {marker.reason}")
                continue
            if marker.action == "file":
                continue  # test_file_listings_are_the_files
            if marker.mode == "plain":
                session.execute(block)
            elif marker.mode == "background":
                session.start(["bash", "-e", "-o", "pipefail", str(session.script(block))], marker.addresses, block)
            elif marker.mode == "served":
                server = session.served(marker.model, marker.addresses[0], block)
                since = len(server.log_lines())
                session.execute(block)
                assert _requests_answered_below_400(server, since, block) > 0, \
                    f"{block.where} is marked as talking to {marker.model} but made no request to it"
            elif marker.mode == "pulumi":
                program = scratch / f"pulumi-{block.line}" / "__main__.py"
                program.parent.mkdir()
                program.write_text(block.text)
                result = subprocess.run(["python", "-c", PULUMI_RUNNER, str(program), KUBECONFIG], cwd=sandbox,
                                        env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False)
                assert result.returncode == 0, \
                    f"{block.where}: the program failed under the mocks:\n{result.stderr[-4000:]}"
                counts = json.loads(result.stdout.strip().splitlines()[-1])
                assert counts.get("servedmodel:index:ServedModel"), f"{block.where} declared no ServedModel: {counts}"
            session.ran.append(block.where)
    finally:
        session.stop_all()
    return session


def _documents_with_blocks_to_run() -> list:
    params = []
    for doc in docsource.documents():
        blocks = command_blocks(doc)
        if not blocks:
            continue
        name = docsource.rel(doc)
        params.append(pytest.param(doc, id=name, marks=[pytest.mark.slow] if name in SLOW else []))
    return params


@pytest.mark.parametrize("doc", _documents_with_blocks_to_run())
def test_the_documents_commands_run_as_written(doc: Path, model_cache: Path, port_lock: None, tmp_path: Path) -> None:
    sandbox, scratch = tmp_path / "servedmodel", tmp_path / "scratch"
    sandbox.mkdir()
    scratch.mkdir()
    _copy_tracked_files(sandbox)
    started = time.monotonic()
    session = run_document(doc, sandbox, scratch, model_cache)
    print(f"\n{docsource.rel(doc)}: {len(session.ran)} blocks ran, {len(session.not_run)} not run, "
          f"{time.monotonic() - started:.1f} s")
    for line in session.not_run:
        print(f"  not run: {line}")
