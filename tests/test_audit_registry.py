"""The ``AUDITS`` registry: the CLI and ``audit all`` are built from it, nothing names an audit."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from spatialspec.audit import audit_names
from spatialspec.audit.base import AUDITS, Audit, AuditResult, load_audits, register_audit
from spatialspec.cli import build_parser, main

PNG = b"\x89PNG\r\n\x1a\n fake"


class FakeAudit(Audit):
    """Returns the checkpoint's name length; records its calls."""

    name = "fake"
    calls: ClassVar[list[dict[str, Any]]] = []

    def run(self, checkpoint, manifest=None, *, seed=0, second_checkpoint=None, **options):
        FakeAudit.calls.append({"checkpoint": str(checkpoint), "seed": seed, **options})
        return AuditResult(self.name, {"length": len(str(checkpoint)), "_array": [1, 2]})

    def headline(self, result: AuditResult) -> dict[str, Any]:
        return {"fake_length": result.data["length"]}

    def summary_columns(self, headline: Mapping[str, Any]) -> dict[str, str]:
        return {"fake length": str(headline["fake_length"])}

    def markdown(self, data: Mapping[str, Any]) -> str:
        return f"# Fake\n\nlength {data['length']}\n"

    def figures(self, data: Mapping[str, Any]) -> dict[str, bytes]:
        return {"fake.png": PNG}

    def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        p = sub.add_parser("fake", help="a test audit")
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--fake-option", type=int, default=1)
        return p

    def run_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        return self.run(args.checkpoint, fake_option=args.fake_option).data

    def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fake-option", type=int, default=1)

    def suite_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"fake_option": args.fake_option}


@pytest.fixture
def only_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry holds the fake audit alone (the real ones are restored afterwards)."""
    load_audits()
    monkeypatch.setattr(AUDITS, "_items", {})
    register_audit(FakeAudit)
    FakeAudit.calls = []
    yield


@pytest.fixture
def with_fake() -> Iterator[None]:
    """The fake audit registered beside the real ones; unregistered afterwards."""
    load_audits()
    register_audit(FakeAudit)
    try:
        yield
    finally:
        AUDITS._items.pop("fake", None)


def test_the_registry_holds_the_listed_audits() -> None:
    registry = load_audits()
    assert registry.names() == ["masking", "saliency", "slices"] == sorted(audit_names())
    for name in registry:
        audit = registry.get(name)()
        assert isinstance(audit, Audit) and audit.name == name


def _audit_subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    audit = top.choices["audit"]
    return next(a for a in audit._actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_each_audit_cli_is_built_from_the_registry(with_fake: None) -> None:
    subs = _audit_subparsers(build_parser("audit"))
    assert list(subs) == [*AUDITS.names(), "all"]
    for name in AUDITS:
        own = AUDITS.get(name)().add_arguments(argparse.ArgumentParser().add_subparsers())
        assert _options(subs[name]) == _options(own)
    assert "--fake-option" in _options(subs["all"])  # the audit's own suite options


def test_other_commands_do_not_import_the_audits() -> None:
    import subprocess
    import sys

    code = ("import sys; from spatialspec.cli import build_parser; build_parser('prepare'); "
            "print(sorted(m for m in sys.modules if m.startswith('spatialspec.audit') "
            "or m == 'torch'))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['spatialspec.audit']"


def test_a_registered_audit_runs_from_its_cli(only_fake: None, capsys) -> None:
    assert main(["audit", "fake", "--checkpoint", "abc", "--fake-option", "3"]) == 0
    assert FakeAudit.calls == [{"checkpoint": "abc", "seed": 0, "fake_option": 3}]


def test_audit_all_runs_every_registered_audit(only_fake: None, tmp_path: Path) -> None:
    argv = ["audit", "all", "--model", "one=a.ckpt", "--model", "two=bb.ckpt",
            "--fake-option", "5", "--seed", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert [c["checkpoint"] for c in FakeAudit.calls] == ["a.ckpt", "bb.ckpt"]
    assert all(c["fake_option"] == 5 and c["seed"] == 2 for c in FakeAudit.calls)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["models"]["one"]["fake_length"] == len("a.ckpt")
    assert summary["models"]["two"]["fake_length"] == len("bb.ckpt")
    assert set(summary["models"]["one"]["seconds"]) == {"fake"}
    assert summary["expectations"] == {}
    # the shared writer: <name>.json (no _-keys), <name>.md, the figures
    assert json.loads((tmp_path / "one" / "fake.json").read_text()) == {"length": 6}
    assert (tmp_path / "one" / "fake.md").read_text().startswith("# Fake")
    assert (tmp_path / "two" / "fake.png").read_bytes() == PNG
    md = (tmp_path / "summary.md").read_text()
    assert "| model | fake length |" in md and "| two | 7 |" in md
    assert "Per-model details: `<model>/fake.md`." in md


def test_headline_keys_may_not_collide(only_fake: None, tmp_path: Path, capsys) -> None:
    class Twin(FakeAudit):
        name = "twin"

        def add_arguments(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
            return sub.add_parser("twin")

        def add_suite_arguments(self, parser: argparse.ArgumentParser) -> None:
            pass

    register_audit(Twin)
    assert main(["audit", "all", "--model", "one=a.ckpt", "--out", str(tmp_path)]) == 2
    assert "repeats the headline key 'fake_length'" in capsys.readouterr().err
