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


def compile_(tiny_raw: Path, out: Path, passes: str) -> Path:
    from qgraph.cli import main

    assert main(["compile", str(tiny_raw), "-o", str(out), "--passes", passes, "-q"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_static_bundles(
    tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny Qwen3-ASR compiled ``default`` (stacked caches), then ``static-kv-cache``
    (``static``: capacity grown on demand; ``fixed``: ``max_len=128``)."""
    base = tmp_path_factory.mktemp("static")
    default = compile_(tiny_raw, base / "default", "default")
    return {
        "default": default,
        "static": compile_(default, base / "static", "static-kv-cache"),
        "fixed": compile_(default, base / "fixed", "static-kv-cache{max_len=128}"),
    }
