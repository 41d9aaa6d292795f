"""``qgraph.shapes``: the shapes fusions match on, inferred for graphs that carry none."""

import onnx_ir as ir

from qgraph import shapes

# TorchScript's Whisper decoder positions: arange(seq) + past, tiled over the batch
POSITIONS = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[batch,seq] ids, float[16,8] table) => (float[batch,seq,8] y) {
    shape = Shape (ids)
    one = Constant <value = int64 {1}> ()
    zero = Constant <value = int64 {0}> ()
    seq = Gather <axis = 0> (shape, one)
    batch = Gather <axis = 0> (shape, zero)
    range = Range (zero, seq, one)
    axis0 = Constant <value = int64[1] {0}> ()
    row = Unsqueeze (range, axis0)
    two = Constant <value = int64[1] {2}> ()
    ones = ConstantOfShape <value = int64[1] {1}> (two)
    expanded = Expand (row, ones)
    b = Unsqueeze (batch, axis0)
    keep = Constant <value = int64[1] {1}> ()
    repeats = Concat <axis = 0> (b, keep)
    tiled = Tile (expanded, repeats)
    y = Gather (table, tiled)
}
"""

# BERT's positions: a [1, T] table sliced by the sequence length, added to [batch, seq, 8]
SLICED = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[batch,seq] ids, float[T,8] pemb, float[batch,seq,8] x) => (float[batch,seq,8] y) {
    table = Constant <value = int64[1,T] {TABLE}> ()
    shape = Shape (ids)
    one = Constant <value = int64 {1}> ()
    seq = Gather <axis = 0> (shape, one)
    zero = Constant <value = int64[1] {0}> ()
    end = Unsqueeze (seq, zero)
    axes = Constant <value = int64[1] {1}> ()
    positions = Slice (table, zero, end, axes, axes)
    p = Gather (pemb, positions)
    y = Add (x, p)
}
"""


def _sliced(rows: int) -> ir.Model:
    table = ", ".join(str(i) for i in range(rows))
    return ir.from_onnx_text(SLICED.replace("TABLE", table).replace("T", str(rows)))


def _shape(model: ir.Model, name: str) -> list:
    value = next(o for n in model.graph for o in n.outputs if o.name == name)
    return [d if isinstance(d, int) else d.value for d in value.shape]


def test_range_expand_and_tile_by_sizes_known_in_part():
    model = ir.from_onnx_text(POSITIONS)
    with shapes.inferred(model) as prepared:
        assert _shape(model, "range") == ["seq"]
        assert _shape(model, "expanded") == [1, "seq"]
        assert _shape(model, "tiled") == ["batch", "seq"]
        assert _shape(model, "y") == ["batch", "seq", 8]
        prepared.restore()
    assert next(o for n in model.graph for o in n.outputs if o.name == "tiled").shape is None


def test_sliced_positions_are_the_sequence_length_where_the_add_runs():
    model = _sliced(8)
    with shapes.inferred(model):
        assert _shape(model, "positions") == [1, "seq"]  # Min(8, seq), equal to seq in the Add
        assert _shape(model, "p") == [1, "seq", 8]


def test_a_one_row_table_is_not_the_sequence_length():
    """Min(1, seq) broadcasts along the sequence: nothing proves it equal to seq."""
    model = _sliced(1)
    with shapes.inferred(model):
        assert _shape(model, "positions")[1] != "seq"
        assert _shape(model, "p")[1] != "seq"


def test_expand_minus_one_idiom_and_constants_dropped_on_close():
    """``x.expand(batch, -1)`` as TorchScript writes it: Where(Equal(shape, -1), 1, shape)."""
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch,seq] ids, int64[1,seq] row) => (int64[batch,seq] y) {
        shape = Shape <end = 1> (ids)
        minus = Constant <value = int64[1] {-1}> ()
        wanted = Concat <axis = 0> (shape, minus)
        two = Constant <value = int64[1] {2}> ()
        ones = ConstantOfShape <value = int64[1] {1}> (two)
        neg = Mul (ones, minus)
        is_neg = Equal (wanted, neg)
        target = Where (is_neg, ones, wanted)
        y = Expand (row, target)
        half = Constant <value = int64 {2}> ()
        width = Div (two, half)
    }""")
    with shapes.inferred(model):
        assert _shape(model, "y") == ["batch", "seq"]
        width = next(o for n in model.graph for o in n.outputs if o.name == "width")
        assert width.const_value is not None and width.const_value.numpy().tolist() == [1]
    assert width.const_value is None
