"""The pass registry: built-in passes, plugins, local pass files and named pipelines.

Sources, in order: the explicit table in ``qgraph.passes`` (``BUILTIN_PASSES`` and
``BUILTIN_PIPELINES``), the entry-point group ``qgraph.passes`` (each entry point names a pass
class or a module whose pass classes are all registered), ``register()`` calls, and
``--pass-module FILE.py``. A name can be taken once; registering a different class under a taken
name is an error.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from qgraph.errors import PipelineError
from qgraph.pass_api import BundlePass, GraphPass, QPass

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qgraph.passes"


@dataclass
class NamedPipeline:
    name: str
    text: str
    summary: str


@dataclass
class Registry:
    passes: dict[str, type[QPass]] = field(default_factory=dict)
    pipelines: dict[str, NamedPipeline] = field(default_factory=dict)

    def copy(self) -> Registry:
        """A registry with the same entries, to extend without touching this one."""
        return Registry(dict(self.passes), dict(self.pipelines))

    def register(self, cls: type[QPass]) -> type[QPass]:
        """Register a pass class (usable as a decorator)."""
        if not (inspect.isclass(cls) and issubclass(cls, GraphPass | BundlePass)) or not cls.name:
            raise PipelineError(
                f"{cls!r} is not a pass: subclass GraphPass or BundlePass and set name"
            )
        known = self.passes.get(cls.name)
        if known is not None and known is not cls:
            raise PipelineError(
                f"pass name '{cls.name}' is taken by {known.__module__}.{known.__qualname__}"
            )
        if cls.name in self.pipelines:
            raise PipelineError(f"'{cls.name}' is already the name of a pipeline")
        self.passes[cls.name] = cls
        return cls

    def register_pipeline(self, name: str, text: str, summary: str) -> None:
        if name in self.passes:
            raise PipelineError(f"'{name}' is already the name of a pass")
        self.pipelines[name] = NamedPipeline(name, text, summary)

    def register_module(self, module) -> list[type[QPass]]:
        """Register every pass class defined in ``module``."""
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, GraphPass | BundlePass)
            and obj.__module__ == module.__name__
            and obj.name
        ]
        for cls in found:
            self.register(cls)
        return found

    def load_pass_module(self, path: str | Path) -> list[type[QPass]]:
        """Import a local ``.py`` file and register the passes it defines."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"--pass-module {path}: no such file")
        mod_name = f"qgraph_user_passes.{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise PipelineError(
                f"--pass-module {path}: import failed ({type(err).__name__}: {err})"
            ) from None
        found = self.register_module(module)
        if not found:
            raise PipelineError(
                f"--pass-module {path}: defines no pass (subclass GraphPass or BundlePass)"
            )
        return found

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as err:
                logger.warning("plugin %s could not be loaded: %s", ep.name, err)
                continue
            if inspect.ismodule(obj):
                self.register_module(obj)
            else:
                self.register(obj)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry: built-ins plus installed plugins (built once)."""
    global _DEFAULT
    if _DEFAULT is None:
        from qgraph import passes as builtin

        reg = Registry()
        for cls in builtin.BUILTIN_PASSES:
            reg.register(cls)
        for name, (text, summary) in builtin.BUILTIN_PIPELINES.items():
            reg.register_pipeline(name, text, summary)
        reg.load_entry_points()
        _DEFAULT = reg
    return _DEFAULT


def registry_with(pass_modules) -> Registry:
    """A copy of the default registry plus the passes of local ``--pass-module`` files."""
    registry = default_registry().copy()
    for path in pass_modules:
        registry.load_pass_module(path)
    return registry


def register(cls: type[QPass]) -> type[QPass]:
    """Register a pass in the default registry (decorator)."""
    return default_registry().register(cls)
