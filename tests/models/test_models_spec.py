"""ModelSpec and Tolerance validation, and the graph helpers of the export step (no export)."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from servedmodel.models import ModelSpec, SpecError, Tolerance
from servedmodel.models.compress import Int8Options, topological_sort
from servedmodel.models.export import ExportOptions, rename_io


def spec(**kw):
    base = dict(name="m", module=torch.nn.Linear(4, 2), example_inputs=(torch.zeros(2, 4),),
                input_names=["x"], output_names=["y"])
    return ModelSpec(**{**base, **kw})


def test_defaults():
    s = spec()
    assert s.dynamic_axes == {"x": {0: "batch"}}
    assert s.max_batch_size == 32 and s.warmup_batch_sizes == (1, 8, 32)
    assert s.task == "generic" and s.resolved_int8_method() == "dynamic"
    assert spec(calibration_inputs=[(torch.zeros(3, 4),)]).resolved_int8_method() == "static"
    assert spec(max_batch_size=0, example_inputs=(torch.zeros(4),)).dynamic_axes == {}


@pytest.mark.parametrize("kw, field", [
    (dict(name="has space"), "name"),
    (dict(module="not a module"), "module"),
    (dict(example_inputs=("x",)), "example_inputs"),
    (dict(input_names=["a", "b"]), "input_names has 2 names"),
    (dict(output_names=[]), "output_names"),
    (dict(output_names=["x"]), "overlap"),
    (dict(max_batch_size=-1), "max_batch_size"),
    (dict(task="detection"), "task"),
    (dict(int8_method="static"), "calibration_inputs"),
    (dict(dynamic_axes={"nope": {0: "batch"}}), "dynamic_axes"),
    (dict(dynamic_axes={"x": {5: "batch"}}), "rank 2"),
    (dict(example_inputs=(torch.zeros(1, 4),)), "batch size 1"),
    (dict(labels="abc"), "labels"),
    (dict(tolerances={"int4": Tolerance(atol=1.0, rtol=0.0)}), "tolerances key 'int4'"),
    (dict(calibration_inputs=[(torch.zeros(2, 4, dtype=torch.int64),)]), "calibration_inputs[0]"),
    (dict(warmup_batch_sizes=[64]), "warmup_batch_sizes"),
    (dict(int8_keep_fp32=["encoder.layer.0"]), "int8_keep_fp32 names ['encoder.layer.0']"),
    (dict(input_ranges={"nope": (0, 1)}), "input_ranges names 'nope'"),
    (dict(input_ranges={"x": (1, 0)}), "input_ranges['x'] must be (low, high)"),
    (dict(input_ranges={"x": (0, float("inf"))}), "input_ranges['x'] must be (low, high)"),
    (dict(input_ranges={"x": (0, True)}), "input_ranges['x'] must be (low, high)"),
    (dict(input_ranges={"x": (0.5, 0.9)}), "input_ranges['x'] is [0.5, 0.9], but example_inputs holds"),
    (dict(input_ranges={"x": (-1, 1)}, verification_inputs=[(torch.full((3, 4), 2.0),)]),
     "but verification_inputs[0] holds"),
    (dict(input_ranges=[(0, 1)]), "input_ranges must be a mapping"),
    (dict(input_max_shapes={"nope": (-1, 4)}), "input_max_shapes names 'nope'"),
    (dict(input_max_shapes={"x": (-1,)}), "input_max_shapes['x'] must be a list of integers >= 1 (or -1: no "
                                          "maximum) of the input's rank 2"),
    (dict(input_max_shapes={"x": (-1, 0)}), "input_max_shapes['x'] must be"),
    (dict(input_max_shapes={"x": (-1, 3)}), "input_max_shapes['x'] is [-1, 3], but example_inputs has shape [2, 4]"),
    (dict(max_request_elements=0), "max_request_elements must be an integer >= 1"),
    (dict(max_request_elements=True), "max_request_elements must be an integer >= 1"),
    (dict(max_request_elements=3), "max_request_elements 3 is below one example row's 4 elements"),
])
def test_invalid_spec_names_the_field(kw, field):
    with pytest.raises(SpecError) as e:
        spec(**kw)
    assert field in str(e.value)


def test_request_bounds_accepted_and_normalised():
    s = spec(input_ranges={"x": [-1, 1.5]}, input_max_shapes={"x": [-1, 4]}, max_request_elements=4)
    assert s.input_ranges == {"x": (-1, 1.5)} and s.input_max_shapes == {"x": (-1, 4)}
    assert s.max_request_elements == 4
    assert spec().input_ranges is None and spec().max_request_elements is None
    ids = spec(module=torch.nn.Embedding(10, 2), example_inputs=(torch.zeros(2, 3, dtype=torch.int64),),
               input_ranges={"x": (0.0, 9.0)})
    assert ids.input_ranges == {"x": (0, 9)} and all(type(v) is int for v in ids.input_ranges["x"])
    with pytest.raises(SpecError, match=r"input_ranges\['x'\] must be integers for the integer input 'x'"):
        spec(module=torch.nn.Embedding(10, 2), example_inputs=(torch.zeros(2, 3, dtype=torch.int64),),
             input_ranges={"x": (0, 9.5)})


def test_all_problems_reported_at_once():
    with pytest.raises(SpecError) as e:
        spec(name="bad name", task="x", max_batch_size=-3)
    msg = str(e.value)
    assert "name must" in msg and "task must" in msg and "max_batch_size must" in msg


def test_tolerance_and_options_validated():
    with pytest.raises(SpecError, match="atol"):
        Tolerance(atol=-1, rtol=0)
    with pytest.raises(SpecError, match="min_cosine"):
        Tolerance(atol=None, rtol=0, min_cosine=2)
    with pytest.raises(ValueError, match="opset"):
        ExportOptions(opset=7)
    with pytest.raises(ValueError, match="method"):
        Int8Options(method="weird", op_types=None)


def test_rename_io_resolves_clashes_with_internal_names():
    """The exporter names internal values after ops ('embedding'); a user output of that name
    must not break SSA form (the minilm case)."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["in0"], ["embedding"]), helper.make_node("Neg", ["embedding"], ["out0"])],
        "g", [helper.make_tensor_value_info("in0", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("out0", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    rename_io(m, ["input"], ["embedding"])
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["embedding"]
    assert list(m.graph.node[0].input) == ["input"] and list(m.graph.node[1].output) == ["embedding"]
    assert m.graph.node[0].output[0] != "embedding" and m.graph.node[0].output[0] == m.graph.node[1].input[0]


def test_topological_sort_fixes_appended_nodes():
    g = helper.make_graph(
        [helper.make_node("Neg", ["mid"], ["y"]), helper.make_node("Relu", ["x"], ["mid"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    topological_sort(m.graph)
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node] == ["Relu", "Neg"]
