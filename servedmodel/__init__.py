"""ServedModel: a PyTorch model from source to a served, autoscaled endpoint, as one Pulumi package.

Three worlds, three subpackages (docs/architecture.md):

- `servedmodel.models`: offline preparation (export, verify, compress, package); torch, onnx,
  onnxruntime; never pulumi.
- `servedmodel.serving`: the KServe V2 inference server that runs inside the image; numpy and
  onnxruntime; never torch or pulumi.
- `servedmodel.components`: the Pulumi components (`ServedModel` and its parts).

In a checkout of the repository the subpackages are the top-level folders `models/`, `serving/`
and `components/` (this folder holds links to them); the wheel holds them here.
"""

__version__ = "0.1.0"
