"""The names the pipeline's options are chosen from: a leaf module (it imports nothing), so that
every other module of `models/` and the stack's checks in `components/` import them from one
place without importing anything else."""
from __future__ import annotations

# The one list of compression names (the CLI, build(), the manifest and the stack config use it).
COMPRESSIONS = ("none", "fp16", "int8", "prune", "prune-int8")
PRUNED = ("prune", "prune-int8")  # variants whose parity is reported, not required
TASKS = ("classification", "embedding", "generic")
INT8_METHODS = ("auto", "dynamic", "static")
