"""Bad and unusual inputs (issue #15): each class is refused with one line before any work, and
a valid but unusual input (small tensors in external data) compiles into a bundle that loads."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qgraph import weights
from qgraph.bundle import Bundle
from qgraph.cli import main
from qgraph.errors import BundleError, PipelineError, SelfCheckError
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from tests.conftest import small_model


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, code: int, expected_code: int, message: str) -> None:
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("qgraph"), err
    assert message in err, err
    assert "internal error" not in err and "Traceback" not in err


def small_proto() -> onnx.ModelProto:
    """``tests.conftest.SMALL`` as a proto whose nodes are named n0..n6 (weights inline)."""
    proto = ir.serde.serialize_model(small_model())
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
    return proto


def node(proto: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in proto.graph.node if n.op_type == op)


# -- 2. models that parse but are invalid --------------------------------------------------------
def _undefined_input(p):
    node(p, "Add").input[1] = "nowhere"


def _undeclared_domain(p):
    node(p, "Relu").domain = "com.example"


def _unknown_op(p):
    node(p, "Relu").op_type = "Frobnicate"


def _op_too_new(p):  # Gelu exists from opset 20 on; the model declares 18
    node(p, "Relu").op_type = "Gelu"


def _contrib_op_undeclared(p):  # com.microsoft Gelu, but no com.microsoft opset_import
    n = node(p, "Relu")
    n.op_type, n.domain = "Gelu", "com.microsoft"


def _unknown_contrib_op(p):
    n = node(p, "Relu")
    n.op_type, n.domain = "NoSuchFusion", "com.microsoft"
    p.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _wrong_arity(p):
    del node(p, "Add").input[1]


def _negative_input_dim(p):
    p.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -64


def _negative_tensor_dim(p):
    p.graph.initializer[0].dims[0] = -64


def _impossible_tensor_dims(p):
    del p.graph.initializer[0].dims[:]
    p.graph.initializer[0].dims.extend([2**40, 2**40])


def _raw_data_wrong_size(p):
    t = p.graph.initializer[0]
    t.raw_data = t.raw_data[:-4]


def _typed_data_wrong_count(p):
    t = p.graph.initializer[0]
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * 10)


def _unknown_dtype(p):
    p.graph.initializer[0].data_type = 99


def _ir_version_zero(p):
    p.ir_version = 0


def _duplicate_output(p):
    node(p, "Relu").output[0] = "a"


def _undefined_graph_output(p):
    p.graph.output[0].name = "nothing"


INVALID_MODELS: list[tuple[Callable[[onnx.ModelProto], None], str]] = [
    (_undefined_input, "node 'n6' (Add): input 'nowhere' is not produced by any node"),
    (_undeclared_domain, "node 'n5' (Relu): domain com.example is not declared in opset_import"),
    (_unknown_op, "op 'Frobnicate' does not exist in the default domain at opset 18"),
    (_op_too_new, "op 'Gelu' does not exist in the default domain at opset 18"),
    (_contrib_op_undeclared, "domain com.microsoft is not declared in opset_import"),
    (_unknown_contrib_op, "op 'NoSuchFusion' does not exist in domain 'com.microsoft'"),
    (_wrong_arity, "node 'n6' (Add): "),
    (_negative_input_dim, "input 'x': negative dim in shape ['batch', -64]"),
    (_negative_tensor_dim, "initializer 'w': negative dim in shape [-64, 64]"),
    (_impossible_tensor_dims, "initializer 'w': impossible shape"),
    (_raw_data_wrong_size, "raw data has 16380 bytes but shape [64, 64] of FLOAT needs 16384"),
    (_typed_data_wrong_count, "stores 10 values but shape [64, 64] of FLOAT needs 4096"),
    (_unknown_dtype, "initializer 'w': unknown data type 99"),
    (_ir_version_zero, "ir_version 0 is not valid"),
    (_duplicate_output, "node 'n5' (Relu): output 'a' is produced twice"),
    (_undefined_graph_output, "graph output 'nothing' is not produced"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), INVALID_MODELS, ids=[m.__name__[1:] for m, _ in INVALID_MODELS]
)
def test_invalid_model_is_refused_on_load(tmp_path, capsys, mutate, message):
    proto = small_proto()
    mutate(proto)
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(BundleError, match="m.onnx: ") as info:
        Bundle.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    code, out, err = run_cli(capsys, "compile", path, "-o", tmp_path / "out", "--passes", "cse")
    assert_one_line(err, code, 1, message)
    assert out == "" and not (tmp_path / "out").exists()


def test_ort_conventions_stay_valid(tmp_path):
    """Contrib ops in com.microsoft and ONNX Runtime's default-domain ops load and compile."""
    proto = small_proto()
    gelu = node(proto, "Relu")
    gelu.op_type, gelu.domain = "Gelu", "com.microsoft"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [64], np.ones(64, np.float32))
    proto.graph.initializer.append(scale)
    proto.graph.node.append(
        helper.make_node("SimplifiedLayerNormalization", ["y0", "scale"], ["y"], name="norm")
    )
    node(proto, "Add").output[0] = "y0"
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    out = Bundle.load(path).save(tmp_path / "out")
    ort.InferenceSession(str(out / "m.onnx"))  # ONNX Runtime agrees: the model is valid


# -- 1. small tensors stored as external data ----------------------------------------------------
def test_small_external_tensors_end_up_in_the_output(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    proto = small_proto()
    bias = onnx.numpy_helper.from_array(np.arange(64, dtype=np.float32), "bias")  # 256 bytes
    proto.graph.initializer.append(bias)
    proto.graph.node.append(helper.make_node("Add", ["y0", "bias"], ["y"], name="bias_add"))
    node(proto, "Add").output[0] = "y0"
    onnx.save(proto, src / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=0)
    stored = onnx.load(str(src / "m.onnx"), load_external_data=False)
    assert [t.name for t in weights.external_tensors(stored)] == ["w", "bias"]
    code, _, err = run_cli(capsys, "compile", src, "-o", tmp_path / "out", "--passes", "cse")
    assert code == 0, err
    compiled = onnx.load(str(tmp_path / "out" / "m.onnx"), load_external_data=False)
    locations = {
        e.value
        for t in weights.external_tensors(compiled)
        for e in t.external_data
        if e.key == "location"
    } - {"m.onnx.data"}
    assert locations == set(), f"the output still reads {locations}"
    x = np.ones((2, 64), np.float32)
    want = ort.InferenceSession(str(src / "m.onnx")).run(None, {"x": x})
    got = ort.InferenceSession(str(tmp_path / "out" / "m.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_save_self_check_refuses_an_output_that_cannot_load(tmp_path, small_onnx, monkeypatch):
    """Written components load back before the rename; a reference out of the output folder
    (the data-loss bug, re-created here) is an internal error and nothing is written."""
    bundle = Bundle.load(small_onnx)
    monkeypatch.setattr(weights, "INLINE_LIMIT", 10**9)  # every tensor "small": kept as is
    monkeypatch.setattr(weights, "_in_memory", lambda t, name: t)  # ... and not inlined
    with pytest.raises(
        SelfCheckError, match="failed its self-check: .*small.onnx.data .*is missing"
    ):
        bundle.save(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    assert SelfCheckError.exit_code == 3


# -- 3. output paths, checked before anything is loaded -----------------------------------------
def _output_cases(tmp: Path, src: Path) -> dict[str, tuple[list, str]]:
    blocker = tmp / "a-file"
    blocker.write_text("x")
    single = src / "small.onnx"
    return {
        "output is the input folder": ([src, "-o", src, "--force"], "must not be the input"),
        "output is the input file": ([single, "-o", single, "--force"], "is the input"),
        "output inside the input": ([src, "-o", src / "sub"], "is inside the input"),
        "output contains the input": ([single, "-o", src, "--force"], "contains the input"),
        "parent is a file": ([src, "-o", blocker / "out"], f"{blocker} is a file, not a folder"),
        "missing parent under a file": ([src, "-o", blocker / "x/y/out"], "is a file"),
        "unwritable parent": ([src, "-o", "/proc/qgraph-test/out"], "cannot create files in"),
        "output exists": ([src, "-o", blocker], "already exists"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "output is the input folder",
        "output is the input file",
        "output inside the input",
        "output contains the input",
        "parent is a file",
        "missing parent under a file",
        "unwritable parent",
        "output exists",
    ],
)
def test_output_path_is_checked_before_work(small_onnx, tmp_path, capsys, case):
    args, message = _output_cases(tmp_path, small_onnx)[case]
    before = {p: p.read_bytes() for p in small_onnx.iterdir()}
    code, out, err = run_cli(capsys, "compile", *args, "--passes", "cse")
    assert_one_line(err, code, 1, message)
    assert out == "", "the pipeline ran before the output path was checked"
    assert "Errno" not in err and "Not a directory" not in err
    assert {p: p.read_bytes() for p in small_onnx.iterdir()} == before


# -- 4. external-data locations ------------------------------------------------------------------
def _set_external(bundle: Path, **fields: str | None) -> None:
    path = bundle / "small.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    for t in weights.external_tensors(proto):
        kept = [(e.key, fields.pop(e.key, e.value)) for e in t.external_data]
        del t.external_data[:]
        for key, value in [*kept, *fields.items()]:
            if value is not None:  # None: drop the field
                t.external_data.add(key=key, value=value)
    path.write_bytes(proto.SerializeToString())


EXTERNAL_CASES = {
    "backslash": ({"location": "sub\\small.onnx.data"}, "uses '\\' separators"),
    "nul": ({"location": "small.onnx.data\0x"}, "contains a NUL character"),
    "offset not a number": ({"offset": "abc"}, "offset 'abc' is not a non-negative integer"),
    "negative offset": ({"offset": "-64"}, "offset '-64' is not a non-negative integer"),
    "length not a number": ({"length": "12x"}, "length '12x' is not a non-negative integer"),
    "length contradicts shape": ({"length": "1024"}, "length 1024 does not match its shape"),
    "offset past the end": ({"offset": "16384"}, "too short for 'w' (needs 32768 bytes"),
    "offset past the end, no length": (
        {"offset": "16384", "length": None},
        "too short for 'w' (needs 32768 bytes",
    ),
}


@pytest.mark.parametrize("case", list(EXTERNAL_CASES))
def test_bad_external_data_is_one_line(small_onnx, tmp_path, capsys, case):
    fields, message = EXTERNAL_CASES[case]
    _set_external(small_onnx, **fields)
    with pytest.raises(BundleError) as info:
        Bundle.load(small_onnx)
    assert message in str(info.value) and "external data" in str(info.value)
    code, out, err = run_cli(capsys, "compile", small_onnx, "-o", tmp_path / "out")
    assert_one_line(err, code, 1, message)
    assert not (tmp_path / "out").exists()


# -- 5. the command line -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "x", "-o", "y", "--print-changed=bogus"], "(choose from 'diff', 'summary')"),
        (["export", "bogus", "--model", "tiny", "-o", "y"], "(choose from 'qwen3-asr', 'whisper')"),
        (["pipeline", "bogus"], "(choose from 'show', 'list')"),
        (["compile", "x", "-o", "y", "--bisect-limit", "x"], "invalid int value: 'x'"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert message in err and "usage:" not in err and "--help" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("repeat<2>(cse", "unbalanced '(': expected ')' but found end of text"),
        ("cse)", "unexpected ')': no '(' to close it"),
        ("repeat<2>(cse,repeat<3>(fold-constants)", "unbalanced '('"),
    ],
)
def test_pipeline_syntax_errors_are_never_internal(small_onnx, tmp_path, capsys, text, message):
    code, out, err = run_cli(capsys, "compile", small_onnx, "-o", tmp_path / "o", "--passes", text)
    assert_one_line(err, code, 2, message)


def test_pipeline_text_fuzz_raises_only_pipeline_errors():
    registry = default_registry()
    atoms = [*",{}[]()<>= x1", "repeat", "repeat<2>(", "cse", "fold-constants{", "on=", "[a]"]
    rng = random.Random(15)
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 8)))
        with contextlib.suppress(PipelineError):
            expand(text, registry)
