"""The CLI as users run it (subprocess): every failure exits with its documented code and one
clear line naming the model and the step, and leaves no context at --out."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FACTORIES, ROOT, cli_json, run_cli


def f(factory: str) -> str:
    return f"{FACTORIES}:{factory}"


FAILURES = [
    # (model, compression, extra args, exit code, step, words in the message)
    ("no-such-model", "none", [], 2, "load", ["unknown model", "mnist-mlp"]),
    ("missing/file.py:make", "none", [], 2, "load", ["not found", "missing/file.py"]),
    (str(FACTORIES), "none", [], 2, "load", ["name the factory"]),
    (f("no_such_factory"), "none", [], 2, "load", ["'no_such_factory' not found"]),
    ("mnist-mlp", "none", ["--device", "tpu"], 2, "usage", ["unsupported device 'tpu'"]),
    (f("raises"), "none", [], 3, "factory", ["RuntimeError", "weights not found on purpose"]),
    (f("not_a_spec"), "none", [], 3, "factory", ["returned dict", "not a models.ModelSpec"]),
    (f("invalid_spec"), "none", [], 3, "factory", ["invalid ModelSpec", "name must", "output_names has duplicates"]),
    (f("wrong_labels"), "none", [], 3, "factory", ["labels has 2 names", "has 5 classes"]),
    (f("export_fails"), "none", [], 4, "export", ["torch.onnx.export raised"]),
    (f("strict_fp16"), "fp16", [], 5, "verify-compressed", ["first:", "second:", "within tolerance"]),
    ("mnist-mlp", "int4", [], 6, "compression", ["unsupported compression 'int4'"]),
    (f("no_matmul"), "int8", [], 6, "compression", ["quantized nothing"]),
]


@pytest.mark.parametrize("model, compression, extra, code, step, words", FAILURES,
                         ids=[f"{c}-{s}-{i}" for i, (_, _, _, c, s, _) in enumerate(FAILURES)])
def test_failure_exit_code_and_message(cache_dir, tmp_path, model, compression, extra, code, step, words):
    out = tmp_path / "ctx"
    proc = run_cli("build", "--model", model, "--compression", compression, "--out", str(out), *extra,
                   "--json", cache_dir=cache_dir)
    assert proc.returncode == code, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert f"model {model!r}: {step} failed" in line
    for w in words:
        assert w in line, line
    assert "Traceback" not in proc.stderr
    noise = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("[", "error:"))]
    assert noise == [], "stderr holds more than progress lines and the error line"
    body = cli_json(proc)
    assert body == {"ok": False, "model": model, "step": step, "exit_code": code, "error": line[len("error: "):]}
    # nothing that looks like a context, and no half-written temporary folders
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_are_one_line(cache_dir, tmp_path):
    proc = run_cli("build", "--model", "mnist-mlp", cache_dir=cache_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--out" in proc.stderr


@pytest.mark.parametrize("args, help_command", [((), "python -m models --help"),
                                                  (("bogus",), "python -m models --help"),
                                                  (("build",), "python -m models build --help")])
def test_usage_errors_point_at_a_help_command_that_exists(cache_dir, args, help_command):
    proc = run_cli(*args, cache_dir=cache_dir)
    assert proc.returncode == 2 and f"(see {help_command})" in proc.stderr, proc.stderr
    assert run_cli(*help_command.split()[3:], cache_dir=cache_dir).returncode == 0


def test_a_python_without_torch_is_told_which_environment_builds(tmp_path):
    """`python -m models build` from a Python that lacks the build tools (the system one, not
    .venv) names what is missing and how to get it, instead of failing inside the factory."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = subprocess.run([str(bare / "bin" / "python"), "-m", "models", "build", "--model", "mnist-mlp",
                           "--out", str(tmp_path / "ctx")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "has no torch, onnx, onnxruntime" in proc.stderr and ".venv/bin/python -m models build" in proc.stderr
    assert not (tmp_path / "ctx").exists()


def test_out_that_is_not_a_context_is_not_replaced(build_once, cache_dir, tmp_path):
    build_once("mnist-mlp", "none")
    (tmp_path / "precious.txt").write_text("keep me")
    proc = run_cli("build", "--model", "mnist-mlp", "--out", str(tmp_path), cache_dir=cache_dir)
    assert proc.returncode == 8 and "not a build context" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rebuild_replaces_an_old_context_atomically(build_once, cache_dir, tmp_path):
    build_once("mnist-mlp", "none")
    build_once("mnist-mlp", "int8")
    out = tmp_path / "ctx"
    for compression in ("none", "int8"):
        proc = run_cli("build", "--model", "mnist-mlp", "--compression", compression, "--out", str(out), "--json",
                       cache_dir=cache_dir)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "model/manifest.json").read_text())["compression"]["method"] == compression
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx"]


def test_summary_table(build_once, cache_dir, tmp_path):
    build_once("lenet", "fp16")
    proc = run_cli("build", "--model", "lenet", "--compression", "fp16", "--out", str(tmp_path / "c"),
                   cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    for word in ("version", "size", "fp32 ->", "parity logits", "top-1", "steps", "export"):
        assert word in proc.stdout


def test_cuda_context_packages_the_gpu_runtime(build_once):
    r = build_once("mnist-mlp", "none", device="cuda")
    ctx = r.context_dir
    assert r.manifest["device"] == "cuda"
    assert (ctx / "requirements.txt").read_bytes() == (ROOT / "serving/requirements-cuda.txt").read_bytes()
    assert (ctx / "Dockerfile").read_bytes() == (ROOT / "models/image/Dockerfile.cuda").read_bytes()
    assert r.version != build_once("mnist-mlp", "none").version


def test_list(cache_dir):
    proc = run_cli("list", cache_dir=cache_dir)
    assert proc.returncode == 0
    assert [ln.split()[0] for ln in proc.stdout.splitlines()] == \
        ["mnist-mlp", "lenet", "resnet-tiny", "digits-cnn", "minilm"]


def test_cuda_without_gpu_requirements_fails_clearly(tmp_path, monkeypatch):
    """Before the GPU requirements exist, --device cuda stops at once (exit 8), exporting nothing."""
    import servedmodel.models as models

    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "requirements.txt").write_text("onnxruntime==1.31.1\n")
    monkeypatch.setattr("servedmodel.models.package.SERVING_DIR", serving)
    with pytest.raises(models.BuildError) as e:
        models.build("mnist-mlp", "none", tmp_path / "ctx", device="cuda", cache_dir=tmp_path / "cache")
    assert e.value.exit_code == 8 and e.value.step == "package"
    assert "requirements-cuda.txt missing (needed for device=cuda)" in str(e.value)
    assert not (tmp_path / "ctx").exists()
