"""``--verify-each``: run each changed component in ONNX Runtime before and after every pass.

Before the pass, every targeted component runs on generated inputs (``verify.sample_inputs``);
after it, each modified component runs again on the same inputs (adapted by the pass when it
changed the component's interface) and the outputs are compared with the pass's declared
``Tolerance``. A failure raises ``VerificationError`` naming pass, component and output; a
verdict per checked component goes into ``record.verified``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qgraph.errors import VerificationError
from qgraph.instruments import verify
from qgraph.instruments.base import Instrument, PassContext, PassRecord


class VerifyEach(Instrument):
    def __init__(self, dims: dict[str, int] | None = None) -> None:
        self.dims = dict(dims or {})
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._snapshots: dict[str, tuple] = {}

    def before_pass(self, ctx: PassContext) -> None:
        """Run each targeted component now and keep its outputs for the comparison."""
        self._scratch = tempfile.TemporaryDirectory(prefix="qgraph-verify-")
        scratch = Path(self._scratch.name)
        for c in ctx.components:
            model = ctx.bundle.components[c]
            feeds = verify.sample_inputs(model, self.dims)
            try:
                self._snapshots[c] = (
                    verify.input_signature(model),
                    feeds,
                    verify.run_model(model, feeds, scratch),
                )
            except Exception as err:
                raise VerificationError(
                    f"--verify-each: component '{c}' does not run in ONNX Runtime before pass "
                    f"'{ctx.qpass}' ({str(err).splitlines()[0][:300]}); try --verify-dims"
                ) from None

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        p = ctx.qpass
        try:
            for c in record.modified_components:
                if c not in self._snapshots:
                    continue
                _sig, feeds, before = self._snapshots[c]
                model = ctx.bundle.components[c]
                feeds = p.adapt_feeds(c, feeds, ctx.bundle)
                if {k for k, *_ in verify.input_signature(model)} != set(feeds):
                    record.verified[c] = "skipped: the pass changed the component's inputs"
                    continue
                before = p.adapt_reference(c, before)
                try:
                    after = verify.run_model(model, feeds)
                except Exception as err:
                    raise VerificationError(
                        f"--verify-each: pass '{p}' broke component '{c}': ONNX Runtime cannot "
                        f"run it ({str(err).splitlines()[0][:300]})"
                    ) from None
                problems = verify.compare(before, after, p.tolerance)
                if problems:
                    raise VerificationError(
                        f"--verify-each: pass '{p}' on component '{c}': {problems[0]}"
                    )
                record.verified[c] = "ok"
        finally:
            self._release()

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        self._snapshots = {}
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
