"""The static KV-cache layout at run time: per-layer buffers bound once with I/O binding.

A bundle compiled with ``static-kv-cache`` has decoders whose caches are per-layer inputs
``past_key_values.{i}.key/value`` ``[batch, kv, max_len, head_dim]`` and outputs
``present.{i}.key/value`` of the same shape (``passes/static_kv_cache.py``). ``StaticKvCache``
allocates one numpy buffer per layer and kind, wraps each in an ``OrtValue`` (no copy: ONNX
Runtime reads and writes the numpy memory) and binds it as both the past input and the present
output of the prefill and the step. GroupQueryAttention then sees one pointer for past and
present and writes only the new positions in place (``past_present_share_buffer``), so a step
neither copies the past nor returns the cache through numpy. The step's token input, position
and logits are numpy arrays bound once too; a step writes the token's embedding (or id) and its
position into them and runs the binding.

The buffers hold ``capacity`` positions: a fixed ``max_len`` when the graph declares one, else
what ``reserve`` asks for (prompt + token budget; grown, contents kept, when a step needs more).
The cache object stands in for the (keys, values) pair of the stacked layout, so the greedy loop
of ``qgraph.runtime.qwen3`` runs both layouts unchanged.

Whisper's merged decoder (``qgraph.runtime.whisper``) names its buffers
``past_key_values.{i}.decoder.{key,value}`` (``names``) and has inputs that change once per
utterance, not per step (the encoder states and the cross-attention caches the prefill
computed): ``bind_step_inputs`` binds those to the step, ``prefill(..., outputs=...)`` returns
the prefill outputs it should keep as OrtValues (no numpy copy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from qgraph.errors import RuntimeInputError
from qgraph.runtime.ort import Component

__all__ = ["PAST", "PRESENT", "StaticKvCache", "is_static"]

logger = logging.getLogger(__name__)

PAST = "past_key_values.{i}.{kind}"
PRESENT = "present.{i}.{kind}"
KINDS = ("key", "value")
_GROW = 64
"""Capacity grows in multiples of this many positions."""


def is_static(step: Component) -> bool:
    """True when the step decoder takes per-layer static cache buffers."""
    return PAST.format(i=0, kind="key") in step.input_types


def present_name(past: str) -> str:
    """``past_key_values.X`` -> ``present.X``."""
    return past.replace("past_key_values.", "present.", 1)


def _fill(component: Component) -> Mapping[str, np.ndarray]:
    """Inputs a merged-session branch needs besides its own (empty tensors, branch flag)."""
    return getattr(component, "fill", {})


class StaticKvCache:
    """Per-layer KV buffers of ``batch`` rows, bound to the prefill and step decoders."""

    def __init__(
        self,
        prefill: Component,
        step: Component,
        token_input: str,
        batch: int = 1,
        *,
        names: list[str] | None = None,
    ):
        """``names``: the buffers' past input names (default: every ``past_key_values.{i}.key``
        / ``.value`` of the step); each has its present output ``present.*`` of the same shape."""
        self.prefill_component, self.step_component = prefill, step
        self.token_input = token_input
        self.batch = batch
        if names is None:
            names = [n for n in step.input_types if n.startswith("past_key_values.")]
        if not names:
            raise RuntimeInputError("static KV cache: the step has no past_key_values.* input")
        self.names = names
        shape = step.input_shapes[names[0]]
        self.heads, length, self.head_size = shape[1], shape[2], shape[3]
        if not all(isinstance(d, int) for d in (self.heads, self.head_size)):
            raise RuntimeInputError("static KV cache: kv heads and head size must be static")
        self.fixed: int | None = length if isinstance(length, int) else None
        self.dtype = step.input_types[names[0]]
        for name in names:
            if present_name(name) not in step.output_names:
                raise RuntimeInputError(f"static KV cache: no output {present_name(name)}")
        self._step_inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        """The extra outputs of the last ``prefill`` (OrtValues), by name."""
        self.capacity = 0
        self.buffers: dict[str, np.ndarray] = {}
        self._values: dict[str, Any] = {}
        self._step_io: Any = None
        if self.fixed is not None:
            self.reserve(self.fixed)

    # -- buffers ------------------------------------------------------------------------------
    def reserve(self, positions: int) -> None:
        """Make room for ``positions`` positions (kept contents; rebinds when the buffers grow)."""
        if positions <= self.capacity:
            return
        if self.fixed is not None and (self.capacity or positions > self.fixed):
            raise RuntimeInputError(
                f"the static KV cache holds {self.fixed} positions; {positions} needed"
            )
        capacity = self.fixed or -(-positions // _GROW) * _GROW
        shape = (self.batch, self.heads, capacity, self.head_size)
        old, used = self.buffers, self.capacity
        self.buffers = {}
        for name in self.names:
            buf = np.zeros(shape, self.dtype)
            if name in old:
                buf[:, :, :used] = old[name][:, :, :used]
            self.buffers[name] = buf
        self.capacity = capacity
        self._bind()
        logger.debug("static KV cache: %d positions x %d rows", capacity, self.batch)

    def fill_random(self, positions: int, seed: int = 0) -> None:
        """Random contents in the first ``positions`` positions (benchmarks)."""
        self.reserve(positions + 1)
        rng = np.random.default_rng(seed)
        for buf in self.buffers.values():
            buf[:, :, :positions] = 0.1 * rng.standard_normal(buf[:, :, :positions].shape)

    def _bind(self) -> None:
        import onnxruntime as ort

        self._values = {n: ort.OrtValue.ortvalue_from_numpy(b) for n, b in self.buffers.items()}
        step = self.step_component
        io = step.session.io_binding()
        self._step_feeds = {
            self.token_input: np.zeros(
                [self.batch, 1, *step.input_shapes[self.token_input][2:]],
                step.input_types[self.token_input],
            ),
            "position_ids": np.zeros((self.batch, 1), step.input_types["position_ids"]),
        }
        vocab = self._vocab(step)
        self._logits = np.zeros((self.batch, 1, vocab), np.float32)
        keep = [*self._step_feeds.values(), self._logits]
        io.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        for name, value in {**_fill(step), **self._step_feeds}.items():
            array = np.ascontiguousarray(value)
            keep.append(array)
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        self._bind_cache(io)
        self._step_io, self._keep = io, keep
        self.bind_step_inputs(self._step_inputs)

    def bind_step_inputs(self, values: Mapping[str, Any]) -> None:
        """Bind ``values`` (OrtValues or numpy arrays, kept alive here) as step inputs until
        bound again: inputs that stay for an utterance (Whisper's encoder states and
        cross-attention caches)."""
        import onnxruntime as ort

        self._step_inputs = {**self._step_inputs, **values}
        if self._step_io is None:
            return
        for name, value in values.items():
            if isinstance(value, np.ndarray):
                dtype = self.step_component.input_types[name]
                value = self._step_inputs[name] = np.ascontiguousarray(value, dtype=dtype)
                value = ort.OrtValue.ortvalue_from_numpy(value)
            self._step_io.bind_ortvalue_input(name, value)
            self._keep.append(value)

    def _bind_cache(self, io: Any) -> None:
        for name, value in self._values.items():
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output(present_name(name), value)

    @staticmethod
    def _vocab(step: Component) -> int:
        outputs = {o.name: o for o in step.session.get_outputs()}
        vocab = outputs["logits"].shape[-1]
        if not isinstance(vocab, int):
            raise RuntimeInputError("static KV cache: the step's logits need a static vocab dim")
        return vocab

    # -- running ------------------------------------------------------------------------------
    def prefill(
        self,
        feeds: Mapping[str, np.ndarray],
        row: int | None = None,
        outputs: tuple[str, ...] = (),
    ) -> np.ndarray:
        """Run the prefill on ``feeds`` (ids, positions arange(S), features, offset) for every
        row at once, or for batch row ``row`` alone (feeds of batch 1, written into that row's
        slice of the buffers); the buffers receive positions ``[0, S)``. Returns the logits;
        the ``outputs`` named (besides logits and the buffers) land in ``self.outputs`` as
        OrtValues."""
        import onnxruntime as ort

        seq = int(np.asarray(feeds["position_ids"]).shape[1])
        self.reserve(seq + 1)
        component = self.prefill_component
        io = component.session.io_binding()
        io.bind_output("logits", "cpu")
        for name in outputs:
            io.bind_output(name, "cpu")
        keep = []
        typed = {n: np.asarray(v, dtype=component.input_types[n]) for n, v in feeds.items()}
        for name, value in {**_fill(component), **typed}.items():
            array = np.ascontiguousarray(value)
            keep.append(array)
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        if row is None:
            self._bind_cache(io)
        else:
            if not 0 <= row < self.batch:
                raise RuntimeInputError(f"row {row} outside a batch of {self.batch}")
            for name, buf in self.buffers.items():
                view = ort.OrtValue.ortvalue_from_numpy(buf[row : row + 1])  # contiguous rows
                keep.append(view)
                io.bind_ortvalue_input(name, view)
                io.bind_ortvalue_output(present_name(name), view)
        component.session.run_with_iobinding(io)
        values = io.get_outputs()
        logits = values[0].numpy()
        self.outputs = dict(zip(outputs, values[1 : 1 + len(outputs)], strict=True))
        del keep
        return logits

    def step(self, token: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One step for every row: ``token`` is ``[batch, 1]`` ids or ``[batch, 1, H]``
        embeddings, ``positions`` ``[batch, 1]`` (each row's past length). Returns the logits
        ``[batch, 1, V]`` (a view of the bound buffer: copy it to keep it past the next step)."""
        self.reserve(int(np.max(positions)) + 1)
        self._step_feeds[self.token_input][...] = token
        self._step_feeds["position_ids"][...] = positions
        self.step_component.session.run_with_iobinding(self._step_io)
        return self._logits
