"""Tracing shared by the exporters: ``torch.onnx.export`` (dynamo) to a raw ``onnx_ir.Model``.

``trace`` runs ``torch.onnx.export(dynamo=True, optimize=False)`` at the given opset on example
inputs and returns the ``ONNXProgram.model`` as is: no onnxscript optimizer, no fusions, no
constant folding, initializers still backed by the module's own torch tensors (nothing is
copied or serialised here). Dynamic dims get readable names (``qgraph.export.dims.name_dims``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import onnx_ir as ir
import torch

from qgraph.bundle import Bundle
from qgraph.errors import ExportError
from qgraph.export.dims import DimSpec, name_dims


def trace(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    io: Mapping[str, DimSpec],
    dynamic_shapes: dict | tuple,
    opset: int,
    what: str,
    producer: str,
) -> ir.Model:
    """Export ``module(*args)``; ``io`` names the inputs then the outputs, with their dims.

    Raises ExportError naming ``what`` with the first line of torch's message.
    """
    names = list(io)
    try:
        with warnings.catch_warnings(), torch.no_grad(), quiet_torch_onnx():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                optimize=False,
                opset_version=opset,
                input_names=names[: len(args)],
                output_names=names[len(args) :],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as err:  # torch.export / onnxscript raise many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExportError(f"torch.onnx.export failed for {what}: {first}") from err
    model = program.model
    name_dims(model, io)
    model.producer_name = producer
    return model


logger = logging.getLogger(__name__)


def trace_each(traces: Sequence[tuple[str, Callable[[], ir.Model]]]) -> dict[str, ir.Model]:
    """Run each ``(name, trace)`` in order, logging progress and time; ``{name: model}``."""
    models = {}
    for i, (name, make) in enumerate(traces, 1):
        start = time.perf_counter()
        logger.info("[%d/%d] tracing %s", i, len(traces), name)
        models[name] = make()
        gc.collect()  # torch.export's leftovers, before the next trace
        logger.info(
            "[%d/%d] %s traced in %.1f s", i, len(traces), name, time.perf_counter() - start
        )
    return models


def save_bundle(bundle: Bundle, out_dir: Path, overwrite: bool) -> Path:
    """``bundle.save`` with a log line for the (long) write."""
    start = time.perf_counter()
    logger.info("writing %s", out_dir)
    path = bundle.save(out_dir, overwrite=overwrite)
    logger.info("wrote %s in %.1f s", path, time.perf_counter() - start)
    return path


def rename_initializer(model: ir.Model, old: str, new: str) -> None:
    """Call initializer ``old`` ``new`` (e.g. a tied weight by its checkpoint key: torch names
    a tied embedding / output projection after either module)."""
    inits = model.graph.initializers
    if old in inits and new not in inits:
        value = inits.pop(old)
        value.name = new
        inits.add(value)


def neg_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask for a wrapper: 0 where ``keep``, the dtype's minimum elsewhere (a
    Where, never ``0 * -inf``)."""
    zero = torch.zeros((), dtype=dtype)
    low = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(keep, zero, low)


@contextlib.contextmanager
def quiet_torch_onnx() -> Iterator[None]:
    """Hide torch.onnx's per-call notices (e.g. 'torchvision is not installed')."""
    log = logging.getLogger("torch.onnx")
    saved = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(saved)
