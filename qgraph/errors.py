"""Typed errors: everything a user can cause is a QGraphError whose message says what to do."""

from __future__ import annotations


class QGraphError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""

    exit_code = 1


class BundleError(QGraphError):
    """A model or bundle on disk is missing, corrupt, truncated or unsafe."""


class PipelineError(QGraphError):
    """A pipeline text, pass name, option or ordering is wrong."""

    exit_code = 2


class PassFailure(QGraphError):
    """A pass raised or broke its contract while running."""


class VerificationError(QGraphError):
    """A numeric check (--verify-each, validate) failed."""


class ExportError(QGraphError):
    """The exporter could not read the checkpoint or produce a graph."""


class RuntimeInputError(QGraphError):
    """Audio or runtime inputs are unreadable or unsupported."""


class SelfCheckError(QGraphError):
    """A bundle qgraph wrote failed to load back: a qgraph bug; nothing was written."""

    exit_code = 3
