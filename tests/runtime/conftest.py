"""Fixtures for the runtime tests: ``make_bundle`` writes tiny bundles (see tiny_runtime_bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runtime_bundle import MakeBundle, write_bundle


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """Factory: ``make_bundle(name, **write_bundle options)`` -> bundle folder under tmp_path."""

    def make(name: str = "bundle", **options: object) -> Path:
        return write_bundle(tmp_path / name, **options)  # type: ignore[arg-type]

    return make
