"""ONNX Runtime sessions as the runtimes use them: options, typed inputs, named outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.errors import BundleError, RuntimeInputError

__all__ = ["ORT_TYPES", "Component", "session_options"]

ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(bool)": np.dtype(np.bool_),
}

OPT_LEVELS = ("disable", "basic", "extended", "all")


class Component:
    """One ORT session with its declared input element types and output names.

    ``observer``, when set, is called with ``(name, outputs)`` after every ``run``
    (``qgraph.runtime.session.observe``).
    """

    observer: Callable[[str, Mapping[str, np.ndarray]], None] | None = None

    def __init__(
        self,
        name: str,
        path: Path,
        options: Any,
        providers: list[str],
        model: bytes | None = None,
        prepack_dir: Path | None = None,
    ) -> None:
        """Load ``path``, or the serialised ``model`` (its external data beside ``path``);
        with ``prepack_dir``, through the cache of pre-packed weights there
        (``qgraph.runtime.prepack``)."""
        import onnxruntime as ort

        self.name = name
        self.path = path
        try:
            if prepack_dir is not None:
                from qgraph.runtime.prepack import prepacked_session

                graph = model if model is not None else path.read_bytes()
                self.session = prepacked_session(
                    graph, path.parent, options, providers, prepack_dir
                )
            else:
                if model is not None:
                    options.add_session_config_entry(
                        "session.model_external_initializers_file_folder_path", str(path.parent)
                    )
                self.session = ort.InferenceSession(
                    model if model is not None else str(path),
                    sess_options=options,
                    providers=providers,
                )
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BundleError(f"{path}: ONNX Runtime cannot load {name} ({first[:300]})") from None
        self.input_types: dict[str, np.dtype] = {}
        self.input_shapes: dict[str, list[int | str | None]] = {}
        for value in self.session.get_inputs():
            if value.type not in ORT_TYPES:
                raise BundleError(f"{path}: input {value.name} has unsupported type {value.type}")
            self.input_types[value.name] = ORT_TYPES[value.type]
            self.input_shapes[value.name] = list(value.shape)
        self.output_names = [value.name for value in self.session.get_outputs()]

    def require(self, inputs: set[str], outputs: set[str]) -> None:
        missing_in = sorted(inputs - set(self.input_types))
        extra_in = sorted(set(self.input_types) - inputs)
        missing_out = sorted(outputs - set(self.output_names))
        if missing_in or extra_in or missing_out:
            raise BundleError(
                f"{self.path}: {self.name} does not follow the qwen3-asr I/O contract "
                f"(missing inputs {missing_in}, unexpected inputs {extra_in}, "
                f"missing outputs {missing_out})"
            )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._run(feeds)
        if self.observer is not None:
            self.observer(self.name, out)
        return out

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {
            name: np.asarray(value, dtype=self.input_types[name]) for name, value in feeds.items()
        }
        return dict(zip(self.output_names, self.session.run(None, cast), strict=True))


def session_options(threads: int | None, optimization: str, *, arena: bool = True) -> Any:
    """ONNX Runtime options for one component. ``arena=False`` for a component that runs once
    per utterance on large activations (the encoder): its buffers go back to the system after
    each run instead of staying in ONNX Runtime's CPU arena, which otherwise grows by the
    largest run seen (0.6B encoder, 11 s: +270 MiB resident after two runs, +8 MiB without;
    one malloc per node is nothing next to a run of hundreds of ms). Decoder steps keep the
    arena: they run per token on small, repeating shapes."""
    import onnxruntime as ort

    if optimization not in OPT_LEVELS:
        raise RuntimeInputError(
            f"unknown graph optimization level {optimization!r}; use one of {list(OPT_LEVELS)}"
        )
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise RuntimeInputError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    return options
