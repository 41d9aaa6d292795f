"""``--dump-dir DIR``: ``DIR/NN-pass/<component>.txt`` and ``.diff`` after each pass."""

from __future__ import annotations

import re
from pathlib import Path

from qgraph.bundle import Bundle
from qgraph.instruments.base import Instrument, PassContext, PassRecord
from qgraph.instruments.text import GraphText


class DumpDir(Instrument):
    """Writes the text of the pass's components and its diffs; ``00-input`` holds the input.

    Reads the texts and diffs of ``text`` (a ``GraphText`` that must come *after* this
    instrument in the manager's list, so its ``after_pass`` has run when this one's does).
    """

    def __init__(self, folder: Path, text: GraphText) -> None:
        self.folder = Path(folder)
        self.text = text

    def before_pipeline(self, bundle: Bundle) -> None:
        self._write("00-input", {c: self.text.text(bundle, c) for c in bundle.components}, {})

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        name = f"{record.index:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', ctx.qpass.name)}"
        texts = {c: self.text.texts.get(c, "") for c in record.components}
        self._write(name, texts, record.diffs)

    def _write(self, name: str, texts: dict[str, str], diff_texts: dict[str, str]) -> None:
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        for c, text in texts.items():
            (folder / f"{c.replace('/', '_')}.txt").write_text(text)
        for c, d in diff_texts.items():
            (folder / f"{c.replace('/', '_')}.diff").write_text(d)
