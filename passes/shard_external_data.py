"""One external-data file per component -> shards of at most ``max_bytes`` named the way
Transformers.js loads them: ``X.onnx_data``, ``X.onnx_data_1``, ``X.onnx_data_2``, ...

Browsers and protobuf-limited loaders cannot take a single file over 2 GB; Transformers.js also
needs the number of shards declared exactly, so the pass writes it to ``config.json`` under
``transformers.js_config.use_external_data_format`` (``{"X.onnx": N}``). Tensors are placed in
order; a tensor larger than ``max_bytes`` gets a shard of its own. The ``location`` field of
each tensor names its shard.

Does not fire: the component already has this layout (``skipped:already sharded``) or no
external weights (``skipped:no external data``). Components that share one data file
(``share-weights``) are left alone (``skipped:shared data file``).
Scope: every component by default (``on=`` to choose).
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.pass_api import BundlePass, option
from qgraph.weights import external_tensor_sizes, shard_count

DEFAULT_MAX = 1_900_000_000


class ShardExternalData(BundlePass):
    """External data -> shards under 1.9 GB with Transformers.js names."""

    name = "shard-external-data"
    category = "bundle"
    max_bytes: int = option(DEFAULT_MAX, "largest shard in bytes")

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        counts: dict[str, int] = {}
        for comp in self.targets(bundle.roles()):
            shared = [c for c in bundle.components if bundle.data_file(c) == bundle.data_file(comp)]
            if len(shared) > 1:
                self.count("skipped:shared data file")
                continue
            sizes = external_tensor_sizes(bundle.components[comp])
            if not sizes:
                self.count("skipped:no external data")
                continue
            data = f"{bundle.files[comp]}_data"
            n = shard_count(sizes, self.max_bytes)
            counts[bundle.files[comp].rsplit("/", 1)[-1]] = n
            if (
                bundle.data_files.get(comp) == data
                and bundle.shard_bytes.get(comp) == self.max_bytes
            ):
                self.count("skipped:already sharded")
                continue
            bundle.data_files[comp] = data
            bundle.shard_bytes[comp] = self.max_bytes
            self.count("sharded")
            self.count("shards", n)
            self.touch(comp)
        if self.touched:
            config = bundle.read_json("config.json")
            tjs = config.setdefault("transformers.js_config", {})
            declared = tjs.get("use_external_data_format")
            declared = dict(declared) if isinstance(declared, dict) else {}
            declared.update(counts)
            tjs["use_external_data_format"] = declared
            bundle.write_json("config.json", config)
        return ir.passes.PassResult(bundle, bool(self.touched))
