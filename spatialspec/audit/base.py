"""One interface for every audit, and the :data:`AUDITS` registry the CLI and ``audit all`` use.

An audit is one module defining a subclass of :class:`Audit` registered with
:func:`register_audit`; listing that module in :data:`AUDIT_MODULES` makes ``spatialspec audit
<name>`` and ``spatialspec audit all`` run it (:data:`AUDIT_MODULES` lives in the package's
``__init__``, which imports nothing). The audit says how to run itself on a checkpoint
and a manifest (:meth:`Audit.run` -> :class:`AuditResult`), which numbers ``audit all``
summarises (:meth:`Audit.headline`, :meth:`Audit.summary_columns`), how its result renders
(:meth:`Audit.markdown`, :meth:`Audit.figures`) and its command line
(:meth:`Audit.add_arguments`, :meth:`Audit.run_from_args`); :func:`write_result` writes
``<name>.json``, ``<name>.md`` and the figures of any audit.

This module imports no model code (no torch); the audit modules are imported by
:func:`load_audits` only when an audit runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from spatialspec.audit import AUDIT_MODULES, audit_names
from spatialspec.registry import Registry

__all__ = [
    "AUDITS",
    "AUDIT_MODULES",
    "Audit",
    "AuditResult",
    "audit_names",
    "fmt",
    "load_audits",
    "register_audit",
    "write_result",
]


@dataclass
class AuditResult:
    """What an audit computed on one checkpoint.

    Attributes:
        audit: Name of the audit that produced it.
        data: Its numbers, JSON-ready, plus what only the figures need (arrays, example images;
            :meth:`Audit.json_ready` says which keys go into ``<name>.json``).
    """

    audit: str
    data: dict[str, Any] = field(default_factory=dict)


class Audit:
    """Base class of an audit; subclasses set :attr:`name` and override the methods below."""

    #: Registry name: ``spatialspec audit <name>``, files ``<name>.json`` / ``<name>.md``.
    name: ClassVar[str] = ""
    #: Position of its columns in ``audit all``'s summary table (smaller first).
    table_order: ClassVar[int] = 0
    #: Whether :meth:`run` passes ``second_checkpoint`` on to :attr:`compute`.
    uses_second_checkpoint: ClassVar[bool] = False
    #: Whether :meth:`run` passes ``replicates`` and ``other_architectures`` on.
    uses_replicates: ClassVar[bool] = False

    @staticmethod
    def compute(
        checkpoint: str | Path, manifest: str | Path | None, **options: Any
    ) -> dict[str, Any]:
        """The audit's function: ``(checkpoint, manifest, seed=..., **options) -> data``."""
        raise NotImplementedError

    def run(
        self,
        checkpoint: str | Path,
        manifest: str | Path | None = None,
        *,
        seed: int = 0,
        second_checkpoint: str | Path | None = None,
        replicates: Sequence[str | Path] = (),
        other_architectures: Sequence[str | Path] = (),
        **options: Any,
    ) -> AuditResult:
        """Audit ``checkpoint`` on ``manifest`` (None: the run's own). The model's other models
        go to the audits that use them: ``second_checkpoint`` (another training seed;
        :attr:`uses_second_checkpoint`), ``replicates`` (training seeds) and
        ``other_architectures`` (other encoders on the same data; :attr:`uses_replicates`).

        By default this calls :attr:`compute` (the audit's function) and wraps its result.
        """
        if self.uses_second_checkpoint:
            options["second_checkpoint"] = second_checkpoint
        if self.uses_replicates:
            options["replicates"] = list(replicates)
            options["other_architectures"] = list(other_architectures)
        return AuditResult(self.name, self.compute(checkpoint, manifest, seed=seed, **options))

    def headline(self, result: AuditResult) -> dict[str, Any]:
        """The numbers ``audit all`` puts into ``summary.json`` for one model (flat keys)."""
        raise NotImplementedError

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        """Column header -> formatted cell of ``summary.md`` for one model's headline."""
        return {}

    def summary_note(self) -> str:
        """A sentence ``summary.md`` prints under the table (empty: none)."""
        return ""

    def json_ready(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``data`` written to ``<name>.json`` (default: keys not starting with _)."""
        return {k: v for k, v in data.items() if not k.startswith("_")}

    def markdown(self, data: Mapping[str, Any]) -> str:
        """The ``<name>.md`` report."""
        raise NotImplementedError

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        """File name -> PNG bytes of each figure (default: none)."""
        return {}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """Add ``<name>`` to the ``audit`` subcommands; returns its parser."""
        raise NotImplementedError

    def run_from_args(self, args: argparse.Namespace) -> Any:
        """Run ``spatialspec audit <name>`` from parsed arguments (writes files, prints)."""
        raise NotImplementedError

    def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of ``audit all`` that concern this audit (default: none)."""

    def suite_options(self, args: argparse.Namespace) -> dict[str, Any]:
        """:meth:`run` options from ``audit all``'s parsed arguments (default: none)."""
        return {}


AUDITS: Registry[type[Audit]] = Registry("audit")


def register_audit(cls: type[Audit]) -> type[Audit]:
    """Class decorator: register an :class:`Audit` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return AUDITS.register(cls.name)(cls)


def load_audits() -> Registry[type[Audit]]:
    """Import every module of :data:`AUDIT_MODULES` (registering its audit); return the registry."""
    for module in AUDIT_MODULES:
        importlib.import_module(module)
    return AUDITS


def write_result(audit: Audit, result: AuditResult, out_dir: str | Path) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and every figure into ``out_dir``, atomically.

    Returns:
        The paths: the JSON, the Markdown, then the figures in :meth:`Audit.figures`' order.
    """
    from spatialspec.data.io import atomic_open
    from spatialspec.runinfo import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    data = result.data
    paths = [
        write_json_atomic(out / f"{audit.name}.json", audit.json_ready(data)),
        write_text_atomic(out / f"{audit.name}.md", audit.markdown(data)),
    ]
    for filename, png in audit.figures(data).items():
        with atomic_open(out / filename, "wb") as fh:
            fh.write(png)
        paths.append(out / filename)
    return paths


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; ``–`` for None."""
    return "–" if value is None else f"{value:.{digits}f}"
