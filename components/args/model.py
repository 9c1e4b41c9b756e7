"""ModelArgs: which model to serve and under which name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from servedmodel.models.constants import COMPRESSIONS
from servedmodel.models.loader import is_model_ref
from servedmodel.models.zoo import ZOO as _MODEL_ZOO  # name -> factory; importing it loads no torch

from .checking import ArgsGroup, dns_label, one_of
from .setting import REQUIRED, setting

ZOO = tuple(_MODEL_ZOO)
MAX_NAME = 40  # leaves room for Pulumi's auto-name suffixes and the component suffixes


def _model_ref(value: Any) -> Optional[str]:
    return None if is_model_ref(value) else \
        f"unknown model; accepted: one of {', '.join(ZOO)} or 'path/to/file.py:factory'"


def _metric_drop(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # NaN fails too
        return "must be a share between 0 and 1 (such as 0.01), or unset for the model spec's own allowance"
    return None


@dataclass(frozen=True)
class ModelArgs(ArgsGroup):
    """Which model to serve and under which name (one per served model; the stack's
    `servedmodel:models` list, or the flat `name`/`model`/`compression` keys)."""

    GROUP = "model"

    served_name: str = setting(
        REQUIRED, "Served name of the model (resource names, labels, the key of its stack outputs). Keep it when "
                  "changing @{model.model} so a model change is a rollout, not a replacement. Ignored when the "
                  "stack sets servedmodel:models.",
        key="name", stack_default="model",
        check=dns_label(f"must be a DNS label (lowercase letters, digits, '-') of at most {MAX_NAME} characters",
                        MAX_NAME))
    model: str = setting(
        REQUIRED, f"The model to serve - a zoo name ({', '.join(ZOO)}) or \"path/to/file.py:factory\". Ignored "
                  "when the stack sets servedmodel:models.",
        stack_default="mnist-mlp", check=_model_ref)
    compression: str = setting(
        "none", "Compression applied before packaging - none, fp16, int8, prune (structured pruning with "
                "fine-tuning; needs a spec with an evaluation) or prune-int8 (pruned, then int8). Ignored when the "
                "stack sets servedmodel:models.",
        check=one_of(COMPRESSIONS))
    max_metric_drop: Optional[float] = setting(
        None, "The allowed drop of the model's task metric after compression (a share between 0 and 1, a decimal "
              "number in a string such as \"0.005\"), for every model of the stack and every evaluation of its "
              "spec - what `python -m models build --max-metric-drop` sets; part of the build's cache key. Empty - "
              "each model spec's own allowance (models.DEFAULT_MAX_DROP unless the spec overrides it).",
        unset="", check=_metric_drop)
