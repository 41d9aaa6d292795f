"""GraphSurgeonPass: gs surgeries as qgraph passes, lazy weights, exact modified, CLI, plugins."""

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qgraph import registry
from qgraph.bundle import Bundle
from qgraph.cli import main
from qgraph.errors import PassFailure
from qgraph.graphsurgeon import GraphSurgeonPass
from qgraph.instruments.textform import TensorHasher, model_text
from qgraph.testing import check_pass, model_from_text, op_types

gs = pytest.importorskip("onnx_graphsurgeon")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

MUL_ONE = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2,4] x) => (float[2,4] y) <float[1] w = {1.0}, float[1] two = {2.0}> {
    one = Constant <value = float {1}> ()
    a = Mul (x, one)
    b = Relu (a)
    c = Mul (b, two)
    d = Relu (c)
    e = Mul (d, w)
    y = Relu (e)
}
"""


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def readme_blocks(heading: str) -> list[str]:
    section = (ROOT / "README.md").read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]


def test_readme_shows_the_example_in_both_styles():
    ir_style, gs_style = readme_blocks("## Writing a pass")[:2]
    assert ir_style == (EXAMPLES / "drop_mul_one.py").read_text()
    assert gs_style == (EXAMPLES / "drop_mul_one_gs.py").read_text()


@pytest.mark.parametrize("example", ["drop_mul_one", "drop_mul_one_gs"])
def test_both_styles_pass_check_pass(example):
    module = load_example(example)
    cls = module.DropMulOneGS if example.endswith("_gs") else module.DropMulOne
    model = model_from_text(MUL_ONE)
    d = model.graph[4].outputs[0]  # a known shape for d, so that Mul(d, w) can go
    d.dtype, d.shape = ir.DataType.FLOAT, ir.Shape([2, 4])
    result = check_pass(cls(), model)
    assert op_types(result.after).count("Mul") == 1  # Mul(x, 1) and Mul(d, w) gone, * 2 stays
    assert result.stats["removed"] == 2 and result.stats["skipped:not a constant one"] == 1
    check_pass(cls(), model_from_text(MUL_ONE.replace("{1}", "{3}")), expect_modified=False)


class ScaleWeight(GraphSurgeonPass):
    """w -> 2 * w (a surgery that touches a weight; test)."""

    name = "test-scale-weight"

    def surgery(self, graph) -> bool:
        w = graph.tensors()["w"]
        w.values = w.values * 2
        self.count("scaled")
        return True


class ReadWeight(GraphSurgeonPass):
    """Reads every constant and writes it back unchanged (test)."""

    name = "test-read-weight"

    def surgery(self, graph) -> bool:
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant):
                t.values = t.values.copy()
        return True


class NoOp(GraphSurgeonPass):
    """Changes nothing (test)."""

    name = "test-noop"

    def surgery(self, graph) -> bool:
        graph.cleanup()
        return False


def saved_model(tmp_path: Path) -> ir.Model:
    """MatMul with a 1 MiB weight in external data, then Mul by a Constant 1 (with metadata)."""
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[2,512] x, float[512,512] w) => (float[2,512] y) {
            a = MatMul (x, w)
            e = Constant <value_ints: ints = []> ()
            k = Constant <value_ints = [2, 512]> ()
            shape = Concat <axis = 0> (e, k)
            one = Constant <value = float {1}> ()
            b = Mul (a, one)
            r = Reshape (b, shape)
            y = Relu (r)
        }
        """
    )
    value = model.graph.inputs.pop()
    value.const_value = ir.tensor(np.random.default_rng(0).random((512, 512), np.float32), name="w")
    model.graph.register_initializer(value)
    model.graph[0].metadata_props["pkg.torch.onnx.name_scopes"] = "['', 'proj']"
    a = model.graph[0].outputs[0]
    a.dtype, a.shape = ir.DataType.FLOAT, ir.Shape([2, 512])
    bundle = Bundle()
    bundle.add_component("m", model)
    return Bundle.load(bundle.save(tmp_path / "b")).components["m"]


def test_untouched_weights_stay_external_and_unread(tmp_path):
    model = saved_model(tmp_path)
    weight = model.graph.initializers["w"].const_value
    assert isinstance(weight, ir.ExternalTensor) and weight._array is None
    result = load_example("drop_mul_one_gs").DropMulOneGS()(model)
    assert result.modified and "Mul" not in op_types(model)
    assert model.graph.initializers["w"].const_value is weight and weight._array is None
    assert model.graph[0].metadata_props["pkg.torch.onnx.name_scopes"] == "['', 'proj']"


def test_unchanged_means_untouched(tmp_path):
    model = saved_model(tmp_path)
    graph, text = model.graph, model_text(model, TensorHasher())
    assert not NoOp()(model).modified
    assert model.graph is graph and model_text(model, TensorHasher()) == text
    # reading every weight and writing the same values back is no change either
    assert not ReadWeight()(model).modified
    assert model.graph is graph and isinstance(
        model.graph.initializers["w"].const_value, ir.ExternalTensor
    )


def test_empty_list_attributes_survive(tmp_path):
    model = saved_model(tmp_path)  # gs.export_onnx alone cannot write value_ints=[]
    check_pass(load_example("drop_mul_one_gs").DropMulOneGS(), model)
    empty = [n for n in model.graph if n.op_type == "Constant" and "value_ints" in n.attributes]
    assert [list(n.attributes["value_ints"].value) for n in empty] == [[], [2, 512]]
    assert empty[0].attributes["value_ints"].type == ir.AttributeType.INTS


def test_a_surgery_that_touches_a_weight(tmp_path):
    model = saved_model(tmp_path)
    weight = model.graph.initializers["w"].const_value.numpy().copy()
    p = ScaleWeight()
    assert p(model).modified and p.stats["scaled"] == 1
    new = model.graph.initializers["w"].const_value
    assert not isinstance(new, ir.ExternalTensor)
    np.testing.assert_array_equal(new.numpy(), weight * 2)


class FuseGelu(GraphSurgeonPass):
    """Erf GELU chain -> com.microsoft Gelu (a subgraph replaced by a custom op; test)."""

    name = "test-gs-gelu"

    def surgery(self, graph) -> bool:
        changed = False
        for erf in [n for n in graph.nodes if n.op == "Erf"]:
            div, add = erf.i(), erf.o()
            mul = add.o()
            half = mul.o()
            if (div.op, add.op, mul.op, half.op) != ("Div", "Add", "Mul", "Mul"):
                self.count("skipped:not a GELU chain")
                continue
            x, out = div.inputs[0], half.outputs[0]
            half.outputs.clear()
            graph.nodes.append(gs.Node("Gelu", domain="com.microsoft", inputs=[x], outputs=[out]))
            self.count("fused")
            changed = True
        if changed:
            graph.cleanup().toposort()
        return changed


def test_replace_a_subgraph_with_a_custom_op():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[2,8] x) => (float[2,8] y) {
            s = Constant <value = float {1.41421356}> ()
            one = Constant <value = float {1}> ()
            h = Constant <value = float {0.5}> ()
            d = Div (x, s)
            e = Erf (d)
            a = Add (e, one)
            m = Mul (x, a)
            g = Mul (m, h)
            y = Relu (g)
        }
        """
    )
    result = check_pass(FuseGelu(), model)
    assert op_types(result.after) == ["Gelu", "Relu"] and result.stats == {"fused": 1}
    assert result.after.opset_imports["com.microsoft"] == 1


def test_pass_module_on_the_tiny_model(tiny_raw, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "compile",
        tiny_raw,
        "-o",
        tmp_path / "out",
        "--passes",
        "drop-mul-one-gs{on=[decoder_step]},remove-unused",
        "--pass-module",
        EXAMPLES / "drop_mul_one_gs.py",
        "--verify-each",
        "--stats",
    )
    assert code == 0, err
    assert (
        "verify decoder_step: ok" in out and "drop-mul-one-gs{on=[decoder_step]}: removed=" in out
    )
    before = Bundle.load(tiny_raw).components
    after = Bundle.load(tmp_path / "out").components
    assert op_types(after["decoder_step"]).count("Mul") < op_types(before["decoder_step"]).count(
        "Mul"
    )
    assert op_types(after["encoder"]) == op_types(before["encoder"])


def test_entry_point_plugin(small_onnx, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    dist = site / "qgraph_gs_demo-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qgraph-gs-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[qgraph.passes]\ndrop-mul-one-gs = qgraph_gs_demo:DropMulOneGS\n"
    )
    shutil.copy(EXAMPLES / "drop_mul_one_gs.py", site / "qgraph_gs_demo.py")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_DEFAULT", None)
    monkeypatch.delitem(sys.modules, "qgraph_gs_demo", raising=False)
    code, out, err = run_cli(
        capsys, "compile", small_onnx, "-o", tmp_path / "o", "--passes", "drop-mul-one-gs"
    )
    assert code == 0, err
    assert registry.default_registry().passes["drop-mul-one-gs"].__module__ == "qgraph_gs_demo"


def test_missing_graphsurgeon_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)  # import fails
    model = model_from_text(MUL_ONE)
    with pytest.raises(PassFailure, match=r"pip install 'qgraph\[graphsurgeon\]'"):
        NoOp()(model)
