"""decoder_init + decoder_step, one data file each -> one ``decoder_weights.data`` holding each
distinct tensor once (by content).

Initializers of the listed components are compared by dtype, shape and a content hash
(streamed from the memory-mapped data, one tensor at a time); every duplicate is pointed at
the first component's tensor object, and the components are assigned one shared data file.
On save, the first component's tensors fill the shared file (64 KiB-aligned so that ONNX
Runtime can memory-map it) and a tensor that only a later component has goes to that
component's own ``<file>.data``. Works after quantization too (MatMulNBits weights are plain
initializers).

Does not fire: fewer than two of the components exist (``skipped:nothing to share``); everything
is shared already. Statistics: ``tensors shared`` and ``bytes saved``.
Scope: the ``prefill`` and ``step`` components by default (``decoder_init`` and
``decoder_step``; ``on=`` to choose).
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.families import PREFILL, STEP
from qgraph.instruments.textform import TensorHasher
from qgraph.pass_api import BundlePass, option
from qgraph.weights import INLINE_LIMIT, tensor_key


class ShareWeights(BundlePass):
    """Decoder graphs -> one shared, deduplicated, mmap-aligned data file."""

    name = "share-weights"
    category = "bundle"
    default_roles = (PREFILL, STEP)
    file: str = option("decoder_weights.data", "name of the shared data file")

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        comps = self.targets(bundle.roles())
        if len(comps) < 2:
            self.count("skipped:nothing to share")
            return ir.passes.PassResult(bundle, False)
        hasher = TensorHasher()
        first: dict[tuple, ir.TensorProtocol] = {}
        modified = False
        for comp in comps:
            model = bundle.components[comp]
            changed = False
            for graph in model.graphs():
                for value in graph.initializers.values():
                    t = value.const_value
                    if t is None or t.nbytes < INLINE_LIMIT:
                        continue
                    key = (t.dtype, tuple(t.shape), hasher(t))
                    known = first.setdefault(key, t)
                    if known is not t and tensor_key(known) != tensor_key(t):
                        value.const_value = known
                        self.count("tensors shared")
                        self.count("bytes saved", t.nbytes)
                        changed = True
            if bundle.data_files.get(comp) != self.file:
                bundle.data_files[comp] = self.file
                changed = True
            if changed:
                self.touch(comp)
                modified = True
        return ir.passes.PassResult(bundle, modified)
