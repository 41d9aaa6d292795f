"""Built-in passes: the explicit registry table.

Each module holds one rewrite; its docstring is its spec. ``BUILTIN_PASSES`` lists the pass
classes, ``BUILTIN_PIPELINES`` the named pipelines (``name: (text, summary)``).
"""

from qgraph.passes.cse import CommonSubexpressionElimination
from qgraph.passes.fold_constants import FoldConstants
from qgraph.passes.remove_unused import RemoveUnused
from qgraph.passes.strip_reshape_allowzero import StripReshapeAllowzero
from qgraph.passes.topological_sort import TopologicalSort

BUILTIN_PASSES = [
    StripReshapeAllowzero,
    FoldConstants,
    RemoveUnused,
    CommonSubexpressionElimination,
    TopologicalSort,
]

BUILTIN_PIPELINES = {
    "hygiene": (
        "fold-constants,strip-reshape-allowzero,cse,remove-unused,topological-sort",
        "lossless clean-up: fold constants, strip provably-safe allowzero, merge duplicates, "
        "drop dead code, sort",
    ),
    "fp32": (
        "hygiene",
        "every lossless pass; the FP32 release layout",
    ),
    "default": (
        "fp32",
        "the release pipeline (lossless part until quantization lands)",
    ),
}
