"""Structured pruning (`--compression prune` and `prune-int8`): whole channels and neurons are
removed, so the weight tensors really shrink, and the ONNX file with them.

Which channels can go together is decided by torch-pruning's dependency graph (a residual
add or a concatenation couples the layers on both sides; the library traces the model and
prunes each coupled group at once), not by a graph walk of our own. Channels are ranked by
the L2 norm of their weights across the group. The layers that produce the model's outputs
are kept whole, so the served signature never changes. When the spec carries training data
(`ModelSpec.finetune`) the pruned model is fine-tuned briefly, deterministically, before it
is exported.

Pruning changes outputs by design: the pipeline reports parity for a pruned variant but
judges it by the task metric (models/evaluate.py).

torch and torch-pruning are imported inside the functions: only a pruning build needs them,
and `import models` must not load torch.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from .errors import BuildError, SpecError
from .export import flatten_outputs
from .train import LOSSES, train

IMPORTANCES = ("l1", "l2")


@dataclass(frozen=True)
class PruneOptions:
    """How much to prune, and what to keep whole.

      ratio       share of the channels/neurons removed from every prunable group (0 < r < 1)
      importance  "l2" or "l1": the norm of a channel's weights across its coupled group
      keep        submodule names (module.named_modules()) never pruned; the layers producing
                  the outputs are always kept besides these
      round_to    keep channel counts a multiple of this (e.g. 8, for vectorised kernels)
    """

    ratio: float = 0.5
    importance: str = "l2"
    keep: tuple[str, ...] = ()
    round_to: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool) and 0 < self.ratio < 1):
            problems.append(f"ratio must be a number in (0, 1), got {self.ratio!r}")
        if self.importance not in IMPORTANCES:
            problems.append(f"importance must be one of {', '.join(IMPORTANCES)}, got {self.importance!r}")
        if isinstance(self.keep, str) or not isinstance(self.keep, (list, tuple)):
            problems.append("keep must be a list of submodule names")
        else:
            object.__setattr__(self, "keep", tuple(self.keep))
        if self.round_to is not None and not (isinstance(self.round_to, int) and self.round_to >= 1):
            problems.append(f"round_to must be an integer >= 1 or None, got {self.round_to!r}")
        if problems:
            raise SpecError("invalid PruneOptions: " + "; ".join(problems))


PRUNE = PruneOptions()


@dataclass(frozen=True)
class FineTune:
    """Training data for a short fine-tune after pruning (deterministic: seeded, one thread).

      inputs      a tuple of tensors, one per model input, all rows of the training set
      targets     a tensor: class indices (cross_entropy) or target values (mse); None:
                  distillation, the targets are the unpruned module's own first output on
                  `inputs` (with loss "mse": no labels needed, e.g. for embeddings)
      loss        "cross_entropy" (first output as logits), "mse", or `loss(outputs, targets)`
                  returning a scalar tensor (outputs: the module's output)
      epochs, lr, batch_size, seed   Adam on shuffled mini-batches
    """

    inputs: tuple
    targets: Any
    loss: str | Callable = "cross_entropy"
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        import torch  # a FineTune holds tensors: torch is imported already

        problems = []
        inputs = (self.inputs,) if isinstance(self.inputs, torch.Tensor) else self.inputs
        if not (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs)):
            problems.append("inputs must be a tuple of tensors (one per model input)")
        else:
            object.__setattr__(self, "inputs", tuple(inputs))
            if len({len(t) for t in inputs}) != 1:
                problems.append("inputs must all have the same number of rows")
            elif self.targets is None:
                if self.loss != "mse":
                    problems.append("targets None (distillation from the unpruned module) needs loss 'mse'")
            elif not (isinstance(self.targets, torch.Tensor) and len(self.targets) == len(inputs[0])):
                problems.append("targets must be a tensor with one row per training row, or None")
        if not (callable(self.loss) or self.loss in LOSSES):
            problems.append(f"loss must be one of {', '.join(LOSSES)} or a function, got {self.loss!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a number > 0, got {self.lr!r}")
        if problems:
            raise SpecError("invalid FineTune: " + "; ".join(problems))


def output_layers(module, example_inputs: tuple) -> list[str]:
    """Names of the layers whose out channels are the model's output dims: the last Linear or
    Conv that runs, and any whose output tensor is returned as it is."""
    import torch

    ran: list[tuple[str, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out, name=name: ran.append((name, out)))
             for name, m in module.named_modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            outs = flatten_outputs(module(*example_inputs))
    finally:
        for h in hooks:
            h.remove()
    names = {name for name, out in ran if any(out is o for o in outs)}
    if ran:
        names.add(ran[-1][0])
    return sorted(names)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def prune(spec) -> tuple[Any, dict[str, Any]]:
    """A pruned (and, with spec.finetune, fine-tuned) copy of spec.module, and the details for
    the manifest. Raises BuildError(step="compress" or "compression")."""
    import torch
    import torch_pruning as tp

    options = spec.prune or PRUNE
    ft = spec.finetune
    teacher = None
    if ft is not None and ft.targets is None:
        # Distillation: what the unpruned model computes is what the pruned one must learn.
        with torch.no_grad():
            teacher = torch.cat([flatten_outputs(spec.module.eval()(*(t[i:i + ft.batch_size] for t in ft.inputs)))[0]
                                 for i in range(0, len(ft.inputs[0]), ft.batch_size)])
    module = copy.deepcopy(spec.module).eval()
    named = dict(module.named_modules())
    kept = sorted(set(output_layers(module, spec.example_inputs)) | set(options.keep))
    with torch.no_grad():
        before = [o.shape for o in flatten_outputs(module(*spec.example_inputs))]
    params_before = _params(module)
    try:
        pruner = tp.pruner.BasePruner(
            # torch-pruning annotates one Tensor and int; it takes a tuple of inputs (forward_fn
            # unpacks it) and None (no rounding).
            module, tuple(spec.example_inputs),  # pyright: ignore[reportArgumentType]
            importance=tp.importance.GroupMagnitudeImportance(p=2 if options.importance == "l2" else 1),
            global_pruning=False, pruning_ratio=float(options.ratio), iterative_steps=1,
            ignored_layers=[named[n] for n in kept],
            round_to=options.round_to,  # pyright: ignore[reportArgumentType]
            forward_fn=lambda m, x: m(*x))
        pruner.step()
    except Exception as e:  # noqa: BLE001 - the tracer meets models it cannot follow
        raise BuildError(spec.name, "compress", f"prune: torch-pruning failed: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}") from None
    params_after = _params(module)
    if params_after >= params_before:
        raise BuildError(spec.name, "compression", "prune removed nothing: no layer outside the kept ones "
                         f"({kept}) has channels torch-pruning can remove")
    try:
        with torch.no_grad():
            after = [o.shape for o in flatten_outputs(module(*spec.example_inputs))]
    except Exception as e:  # noqa: BLE001
        raise BuildError(spec.name, "compress", f"prune: the pruned module fails to run: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]} "
                         "(keep the layers involved whole: PruneOptions.keep)") from None
    if after != before:
        raise BuildError(spec.name, "compress", f"prune changed the output shapes {[list(s) for s in before]} -> "
                         f"{[list(s) for s in after]}; name the layers that produce them in PruneOptions.keep")
    details: dict[str, Any] = {
        "pruner": f"torch_pruning.pruner.BasePruner ({metadata.version('torch-pruning')})",
        "importance": f"{options.importance} magnitude per coupled group", "ratio": float(options.ratio),
        "round_to": options.round_to, "kept_whole": kept,
        "params_before": params_before, "params_after": params_after, "finetune": None,
    }
    if ft is not None:
        history = train(module, ft.inputs, ft.targets if teacher is None else teacher, loss=ft.loss,
                        epochs=ft.epochs, lr=ft.lr, batch_size=ft.batch_size, seed=ft.seed)
        details["finetune"] = {"rows": len(ft.inputs[0]), "epochs": ft.epochs, "lr": ft.lr,
                               "targets": "distilled from the unpruned module" if teacher is not None else "given",
                               "batch_size": ft.batch_size, "seed": ft.seed,
                               "loss": ft.loss if isinstance(ft.loss, str) else getattr(ft.loss, "__name__", "custom"),
                               "final_loss": float(f"{history[-1]:.4g}")}
    return module.eval(), details
