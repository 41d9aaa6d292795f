"""The CLI as a user drives it: compile with every instrument, passes, pipeline, diff, errors."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qgraph.cli import main
from qgraph.commands.passes import markdown_table
from qgraph.registry import default_registry
from qgraph.testing import model_from_text

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE_PASS = ROOT / "examples" / "drop_mul_one.py"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_with_instruments(small_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys,
        "compile",
        small_onnx,
        "-o",
        out,
        "--passes",
        "default",
        "--print-changed=summary",
        "--timing",
        "--stats",
        "--verify-each",
        "--dump-dir",
        tmp_path / "dumps",
    )
    assert code == 0
    assert re.search(r"\[ 1\] fold-constants\s+changed", stdout)
    assert "nodes 7 -> 5 (-2)" in stdout and "verify small: ok" in stdout
    assert "timing (seconds per pass)" in stdout and "cse: nodes merged=1" in stdout
    assert (tmp_path / "dumps" / "00-input" / "small.txt").exists()
    assert "-%b = MatMul(%r, %w)" in (tmp_path / "dumps" / "03-cse" / "small.diff").read_text()
    from qgraph.bundle import Bundle

    history = Bundle.load(out).history
    assert [h["pass"] for h in history][:2] == ["fold-constants", "strip-reshape-allowzero"]
    assert history[2]["stats"] == {"nodes merged": 1} and history[2]["modified"] is True


def test_print_changed_diff_and_bisect(small_onnx, tmp_path, capsys):
    code, stdout, _ = run_cli(
        capsys,
        "compile",
        small_onnx,
        "-o",
        tmp_path / "o",
        "--passes",
        "cse,fold-constants",
        "--print-changed",
        "--bisect-limit",
        "1",
    )
    assert code == 0
    assert "--- small before cse" in stdout and "+%y = Add(%a, %a)" in stdout
    assert "bisect: stopped after 1 passes; next would be 'fold-constants'" in stdout


def test_second_compile_changes_nothing(small_onnx, tmp_path, capsys):
    run_cli(capsys, "compile", small_onnx, "-o", tmp_path / "a", "--passes", "default")
    code, stdout, _ = run_cli(capsys, "compile", tmp_path / "a", "-o", tmp_path / "b")
    assert code == 0 and " changed " not in stdout
    code, stdout, _ = run_cli(capsys, "diff", tmp_path / "a", tmp_path / "b")
    assert code == 0 and "small: identical" in stdout


def test_diff_between_models(small_onnx, tmp_path, capsys):
    run_cli(capsys, "compile", small_onnx, "-o", tmp_path / "a", "--passes", "cse")
    code, stdout, _ = run_cli(capsys, "diff", small_onnx, tmp_path / "a")
    assert code == 1
    assert "small: nodes 7 -> 6 (-1)" in stdout and "-%b = MatMul(%r, %wt)" in stdout


def test_passes_and_pipeline_show(capsys):
    code, stdout, _ = run_cli(capsys, "passes")
    assert code == 0 and "strip-reshape-allowzero  (graph pass, hygiene)" in stdout
    assert "output_size_limit: int = 262144" in stdout
    code, stdout, _ = run_cli(capsys, "pipeline", "show", "default")
    assert code == 0 and "  fold-constants\n" in stdout and "as text: fold-constants," in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--passes", "fold-constants,fuse-rms-nrom"], "unknown pass 'fuse-rms-nrom'"),
        (["--passes", "fold-constants{nope=1}"], "has no option 'nope'"),
        (["--passes", "fold-constants{output_size_limit=x}"], "bad value 'x'"),
        (["--verify-dims", "seq"], "expected DIM=N"),
    ],
)
def test_pipeline_errors_are_one_line(small_onnx, tmp_path, capsys, args, message):
    code, stdout, err = run_cli(capsys, "compile", small_onnx, "-o", tmp_path / "o", *args)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_inputs_are_one_line(small_onnx, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    before = bad.read_bytes()
    code, _, err = run_cli(capsys, "compile", bad, "-o", tmp_path / "o")
    assert code == 1 and err.startswith("qgraph: error: ") and err.count("\n") == 1
    assert bad.read_bytes() == before and not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, "compile", small_onnx, "-o", small_onnx)
    assert code == 1 and "must not be the input" in err


def test_crash_inside_a_pass_leaves_nothing(small_onnx, tmp_path, capsys):
    module = tmp_path / "crash.py"
    module.write_text(
        "from qgraph.pass_api import GraphPass\n"
        "class Crash(GraphPass):\n"
        "    '''Always fails (test).'''\n"
        "    name = 'crash-test'\n"
        "    def call(self, model):\n"
        "        raise KeyboardInterrupt\n"
    )
    code, _, err = run_cli(
        capsys,
        "compile",
        small_onnx,
        "-o",
        tmp_path / "o",
        "--passes",
        "cse,crash-test",
        "--pass-module",
        module,
    )
    assert code == 130 and "no output was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash.py", "small"]


def test_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"junk")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qgraph.cli",
            "--debug",
            "compile",
            str(bad),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "qgraph", "passes"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "fuse-rms-norm" in proc.stdout


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_pass_runs(tmp_path, capsys):
    code = readme_block("## Writing a pass")
    assert code == EXAMPLE_PASS.read_text(), "README and examples/drop_mul_one.py differ"
    assert len(code.splitlines()) <= 30
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[2,4] x) => (float[2,4] y) {
            one = Constant <value = float {1}> ()
            a = Mul (x, one)
            y = Relu (a)
        }
        """
    )
    from qgraph.bundle import Bundle

    bundle = Bundle()
    bundle.add_component("m", model)
    src = bundle.save(tmp_path / "in")
    shutil.copy(EXAMPLE_PASS, tmp_path / "my_passes.py")
    code, stdout, _ = run_cli(
        capsys,
        "compile",
        src,
        "-o",
        tmp_path / "out",
        "--passes",
        "default,drop-mul-one,remove-unused",
        "--pass-module",
        tmp_path / "my_passes.py",
        "--verify-each",
        "--stats",
    )
    assert code == 0 and "drop-mul-one: removed=1" in stdout
    out = Bundle.load(tmp_path / "out").components["m"]
    assert [n.op_type for n in out.graph] == ["Relu"]


def test_readme_pass_table_is_current():
    assert markdown_table(default_registry()) in README.read_text(), (
        "README pass table is stale: run 'qgraph passes --update-readme README.md'"
    )
