import pytest

from qgraph.errors import PipelineError
from qgraph.pass_api import GraphPass, option
from qgraph.pipeline import RepeatGroup, expand, flatten, parse, to_text
from qgraph.registry import Registry, default_registry


@pytest.mark.parametrize(
    "text",
    [
        "fold-constants",
        "fold-constants,cse",
        "fold-constants{output_size_limit=5},cse{on=[encoder,decoder_step]}",
        "repeat<3>(cse,fold-constants),remove-unused",
        "default,repeat<2>(repeat<2>(cse)),topological-sort",
        "cse{on=[]}",
    ],
)
def test_print_parse_round_trips(text):
    assert str(parse(text)) == text
    assert str(parse(str(parse(text)))) == text


def test_whitespace_is_normalised():
    assert str(parse(" cse , fold-constants { output_size_limit = 5 } ")) == (
        "cse,fold-constants{output_size_limit=5}"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fold-constants,fuse-rms-nrom", "column 16: unknown pass 'fuse-rms-nrom'"),
        ("cse{on=[a}", "column 10: expected ']'"),
        ("cse,,fold-constants", "column 5: expected a pass or pipeline name"),
        ("repeat<0>(cse)", "repeat count must be at least 1"),
        ("cse{on=[a],on=[b]}", "option 'on' given twice"),
        ("", "empty pipeline"),
        ("cse)", "column 4: unexpected ')'"),
    ],
)
def test_errors_point_at_the_column(text, message):
    with pytest.raises(
        PipelineError,
        match=r".*"
        + message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        expand(text, default_registry())


def test_unknown_pass_suggests_close_name():
    reg = default_registry()
    with pytest.raises(PipelineError, match="did you mean 'fold-constants'"):
        expand("fold-constant", reg)


def test_unknown_and_bad_options():
    reg = default_registry()
    with pytest.raises(PipelineError, match="has no option 'foo'.*output_size_limit"):
        expand("fold-constants{foo=1}", reg)
    with pytest.raises(PipelineError, match="bad value 'big' for option 'output_size_limit'"):
        expand("fold-constants{output_size_limit=big}", reg)


def test_named_pipelines_nest_and_expand():
    reg = default_registry()
    steps = expand("default,cse", reg)
    names = [p.name for p in flatten(steps)]
    assert names[-1] == "cse" and "fold-constants" in names
    assert to_text(expand("repeat<2>(cse)", reg)) == "repeat<2>(cse)"
    assert isinstance(expand("repeat<2>(cse)", reg)[0], RepeatGroup)


class _Fuse(GraphPass):
    """A -> B (test)."""

    name = "test-fuse"
    category = "fusion"

    def call(self, model):
        raise NotImplementedError


class _Quant(GraphPass):
    """C -> D (test)."""

    name = "test-quant"
    category = "quantization"
    must_follow = {"fusion": "fusions before quantization"}
    bits: int = option(4, "bits", choices=(4, 8))

    def call(self, model):
        raise NotImplementedError


def test_ordering_constraint_is_checked_not_fixed():
    reg = Registry()
    reg.register(_Fuse)
    reg.register(_Quant)
    expand("test-fuse,test-quant", reg)
    with pytest.raises(PipelineError, match="'test-fuse' must run before 'test-quant'.*move"):
        expand("test-quant,test-fuse", reg)


def test_choices_and_str():
    reg = Registry()
    reg.register(_Quant)
    (p,) = expand("test-quant{bits=8,on=[a,b]}", reg)
    assert str(p) == "test-quant{on=[a,b],bits=8}"
    with pytest.raises(PipelineError, match="bits=5 is not allowed.*4, 8"):
        expand("test-quant{bits=5}", reg)


def test_registry_rejects_name_clash():
    reg = Registry()
    reg.register(_Quant)

    class Other(_Fuse):
        """Other (test)."""

        name = "test-quant"

    with pytest.raises(PipelineError, match="taken"):
        reg.register(Other)


def test_entry_point_plugins_register(monkeypatch):
    import types

    import qgraph.registry as registry_module

    plugin = types.ModuleType("fake_plugin")
    plugin.Quant = _Quant
    monkeypatch.setattr(_Quant, "__module__", "fake_plugin")

    class EntryPoint:
        def __init__(self, name, obj):
            self.name, self.obj = name, obj

        def load(self):
            return self.obj

    def fake_entry_points(group):
        assert group == "qgraph.passes"
        return [EntryPoint("mod", plugin), EntryPoint("cls", _Fuse)]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg = Registry()
    reg.load_entry_points()
    assert set(reg.passes) == {"test-quant", "test-fuse"}
