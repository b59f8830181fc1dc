"""``spatialspec audit all``: the three audits on several models and one summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialspec.audit.suite import EXPECTATIONS, run_suite
from spatialspec.cli import main


def test_suite_writes_per_model_files_and_the_summary(tiny_checkpoints, tmp_path: Path) -> None:
    summary = run_suite(tiny_checkpoints, tmp_path, saliency_limit=6)
    assert set(summary["models"]) == {"binary", "seg"}
    for name, m in summary["models"].items():
        for stem in ("masking", "saliency", "slices"):
            assert (tmp_path / name / f"{stem}.json").is_file()
        assert 0.0 <= m["localization_auprc"] <= 1.0
        assert 0.0 <= m["spurious_attribution_share"] <= 1.0
        assert m["top_slice_precision"] is None or 0.0 <= m["top_slice_precision"] <= 1.0
        assert set(m["masking"]) >= {"original", "roi_removed", "spurious_removed"}
        assert m["masking_drop"]["original"] == 0.0
    assert set(summary["expectations"]) == set(EXPECTATIONS)
    assert all(isinstance(v, bool) for v in summary["expectations"].values())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["models"]["seg"]["masking"] == summary["models"]["seg"]["masking"]
    assert "| binary |" in (tmp_path / "summary.md").read_text()


def test_cli_rejects_a_malformed_model_argument(tmp_path: Path, capsys) -> None:
    assert main(["audit", "all", "--model", "no-equals-sign", "--out", str(tmp_path)]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err


@pytest.mark.parametrize("audit", ["masking", "saliency", "slices", "all"])
def test_every_audit_has_a_cli(audit: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", audit, "--help"])
    assert exc.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out or audit == "all"
