"""Instruments as objects: the hooks a plugged-in instrument sees, their order, peak memory."""

import json
import time

import numpy as np
import onnx_ir as ir
import pytest

from qgraph.bundle import Bundle
from qgraph.cli import main
from qgraph.errors import PassFailure, VerificationError
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.memory import PeakMemory, kernel_hwm_available
from qgraph.manager import Instruments, run_pipeline
from qgraph.pass_api import GraphPass
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from tests.conftest import small_model


class Explode(GraphPass):
    """Always fails (test)."""

    name = "explode-test"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise RuntimeError("boom")


class Allocate(GraphPass):
    """Touches 200 MB for a moment, changes nothing (test)."""

    name = "allocate-test"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        block = np.ones(200 * 2**20 // 8)  # written, so resident
        time.sleep(0.05)
        del block
        return ir.passes.PassResult(model, False)


class Log(Instrument):
    """The toy instrument: writes down every hook it sees."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_pipeline(self, bundle: Bundle) -> None:
        self.calls.append(f"{self.name}:start")

    def before_pass(self, ctx: PassContext) -> None:
        self.calls.append(f"{self.name}:before {ctx.index} {ctx.qpass.name} {ctx.components}")

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        self.calls.append(f"{self.name}:after {ctx.index} {record.modified}")
        record.extra.setdefault("seen by", []).append(self.name)

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        self.calls.append(f"{self.name}:failed {ctx.qpass.name} {type(error).__name__}")

    def after_pipeline(self, records: list[PassRecord]) -> None:
        self.calls.append(f"{self.name}:end {len(records)}")


def bundle() -> Bundle:
    b = Bundle(family="test")
    b.add_component("small", small_model())
    return b


def steps(text: str) -> list:
    return expand(text, default_registry())


def test_a_toy_instrument_sees_every_pass_and_adds_to_the_history():
    calls: list[str] = []
    b = bundle()
    result = run_pipeline(b, steps("cse,topological-sort"), [Log("toy", calls)])
    assert calls == [
        "toy:start",
        "toy:before 1 cse ['small']",
        "toy:after 1 True",
        "toy:before 2 topological-sort ['small']",
        "toy:after 2 False",
        "toy:end 2",
    ]
    assert [r.extra["seen by"] for r in result.records] == [["toy"], ["toy"]]
    assert b.history[0]["seen by"] == ["toy"] and b.history[0]["modified"] is True


def test_before_in_list_order_after_in_reverse_failure_on_everyone_entered():
    calls: list[str] = []
    b = bundle()
    outer, inner = Log("outer", calls), Log("inner", calls)
    with pytest.raises(PassFailure, match="boom"):
        run_pipeline(b, [*steps("cse"), Explode()], [outer, inner])
    assert calls[:2] == ["outer:start", "inner:start"]
    assert calls[2:] == [
        "outer:before 1 cse ['small']",
        "inner:before 1 cse ['small']",
        "inner:after 1 True",
        "outer:after 1 True",
        "outer:before 2 explode-test ['small']",
        "inner:before 2 explode-test ['small']",
        "inner:failed explode-test PassFailure",
        "outer:failed explode-test PassFailure",
    ]
    assert len(b.history) == 1  # the failed pass left no history entry


def test_an_instrument_can_reject_a_pass_and_stop_the_run():
    class Reject(Instrument):
        def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
            if record.modified:
                raise VerificationError(f"{ctx.qpass.name} changed something")

    class StopAt2(Instrument):
        def should_run(self, p, index: int) -> bool:
            return index < 2

    calls: list[str] = []
    with pytest.raises(VerificationError):
        run_pipeline(bundle(), steps("cse"), [Log("log", calls), Reject()])
    assert calls[-1] == "log:failed cse VerificationError"  # its after_pass never ran
    result = run_pipeline(bundle(), steps("topological-sort,cse"), [StopAt2()])
    assert len(result.records) == 1 and result.stopped_before == "cse"


def test_instruments_config_builds_the_list_from_flags(tmp_path):
    toy = Log("toy", [])
    built = Instruments(
        print_changed="diff",
        dump_dir=tmp_path,
        verify_each=True,
        bisect_limit=3,
        on_record=print,
        memory=True,
        extra=[toy],
    ).build()
    names = [type(i).__name__ for i in built]
    assert names == [
        "OnRecord",
        "BisectLimit",
        "DumpDir",
        "VerifyEach",
        "GraphText",
        "ChangeSummary",
        "Log",
        "PeakMemory",
    ]
    assert [type(i).__name__ for i in Instruments().build()] == ["ChangeSummary"]


@pytest.mark.parametrize("method", ["kernel", "sampler"])
def test_peak_memory_per_pass(method):
    if method == "kernel" and not kernel_hwm_available():
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    b = bundle()
    memory = PeakMemory(method=method)
    result = run_pipeline(b, [*steps("topological-sort"), Allocate(), *steps("cse")], [memory])
    mem = [r.extra["memory"] for r in result.records]
    growth = [m["peak_rss"] - m["start_rss"] for m in mem]
    assert all(m["method"] == method for m in mem)
    assert growth[1] > 150 * 2**20, growth  # the 200 MB block, caught while it lived
    assert growth[0] < 50 * 2**20 and growth[2] < 50 * 2**20, growth  # not the others
    assert memory.run_peak >= mem[1]["peak_rss"]
    assert b.history[1]["memory"] == mem[1]


def test_compile_memory_flag_prints_a_table_and_keeps_it_in_the_manifest(
    small_onnx, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(["compile", str(small_onnx), "-o", str(out), "--passes", "hygiene", "--memory"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "memory (peak RSS per pass" in stdout and "highest" in stdout
    history = json.loads((out / "qgraph.json").read_text())["pipeline"]
    assert history and all(h["memory"]["peak_rss"] > 0 for h in history)
    plain = tmp_path / "plain"
    assert main(["compile", str(small_onnx), "-o", str(plain), "--passes", "hygiene"]) == 0
    assert "memory" not in json.loads((plain / "qgraph.json").read_text())["pipeline"][0]
