"""The cold-start budget of every zoo model (components/coldstart.py), as a markdown table.

    python bench/coldstart.py [--models ...] [--compression fp16] [--bandwidth 50]

Builds each model (cached builds are reused; a cache hit reports the start-up measured when
its context was made), then prints, per model, the budget for two deployments: a GPU replica
on a new Karpenter node of the g5/g6 families (device cuda) and a CPU replica on an existing
node. What each column is: measured (model load + warm-up, compressed layer bytes) or derived
(node table, process start, bandwidth) is said in docs/deploy.md, "Cold-start budget".
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servedmodel.components import coldstart  # noqa: E402
from servedmodel.components.timeouts import readiness_timeouts  # noqa: E402

ZOO = ["mnist-mlp", "lenet", "resnet-tiny", "minilm"]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--models", nargs="+", default=ZOO)
    ap.add_argument("--compression", default="fp16")
    ap.add_argument("--bandwidth", type=int, default=50, help="pull MB/s (servedmodel:pullBandwidthMBps)")
    opts = ap.parse_args()
    import servedmodel.models as models

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as work:
        for m in opts.models:
            for device in ("cuda", "cpu"):
                r = models.build(model=m, compression=opts.compression, out_dir=Path(work) / f"{m}-{device}",
                                 device=device)
                gpu = device == "cuda"
                cold = coldstart.budget(device=device, startup=r.startup,
                                        model_layer_bytes=r.sizes["model_layer_gzip_bytes"],
                                        bandwidth_mb_per_s=opts.bandwidth, needs_node=gpu,
                                        families=("g5", "g6") if gpu else (), provisioner="karpenter")
                out = cold.as_output()
                # The interceptor holds a request as long as one pod may take to be ready.
                wait = readiness_timeouts(cold.start_seconds, device, 1, pull_seconds=cold.pull_seconds,
                                          node_seconds=cold.node_seconds).pod_seconds
                where = "GPU, new Karpenter node (g5/g6)" if gpu else "CPU, existing node"
                rows.append(f"| {m} | {opts.compression} | {where} "
                            f"| {r.startup['load_seconds']:.2f} + {r.startup['warmup_seconds']:.2f} "
                            f"| {r.sizes['model_layer_gzip_bytes'] / 1e6:.2f} MB "
                            f"| {out['nodeSeconds']:.0f} | {out['pullSeconds']:.1f} | {out['startSeconds']:.1f} "
                            f"| **{out['totalSeconds']:.0f}** | {wait} s |")
    print("| model | compression | replica | load + warm-up (s, measured) | model layer (gzip, measured) "
          "| nodeSeconds | pullSeconds | startSeconds | totalSeconds | interceptor wait |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
