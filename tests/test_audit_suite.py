"""``spatialspec audit all``: the three audits on several models and one summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spatialspec.audit.suite import EXPECTATIONS, _multi_pairs, run_suite
from spatialspec.cli import main

#: A cheap saliency audit for the suite's tests.
SALIENCY = {"methods": ["integrated_gradients", "gradcam"], "n_steps": 4, "randomization_images": 2}


def test_suite_writes_per_model_files_and_the_summary(tiny_checkpoints, tmp_path: Path) -> None:
    summary = run_suite(
        tiny_checkpoints, tmp_path, saliency_limit=6, options={"saliency": SALIENCY}
    )
    assert set(summary["models"]) == {"binary", "seg"}
    for name, m in summary["models"].items():
        for stem in ("masking", "saliency", "slices"):
            assert (tmp_path / name / f"{stem}.json").is_file()
        assert 0.0 <= m["localization_auprc"] <= 1.0
        assert 0.0 <= m["spurious_attribution_share"] <= 1.0
        assert set(m["saliency_methods"]) == {"integrated_gradients", "gradcam"}
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


def test_suite_passes_replicates_and_other_architectures_to_saliency(
    tiny_checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spatialspec.audit import saliency

    seen = []
    compute = saliency.SaliencyAudit.compute

    def spy(checkpoint, manifest, **options):
        seen.append({k: options[k] for k in ("replicates", "other_architectures", "n_images")})
        return compute(checkpoint, manifest, **{**options, "other_architectures": []})

    monkeypatch.setattr(saliency.SaliencyAudit, "compute", staticmethod(spy))
    seg = str(tiny_checkpoints["seg"])
    summary = run_suite(
        {"seg": seg},
        tmp_path,
        replicates={"seg": [seg]},
        other_architectures={"seg": ["r18"]},
        audits=["saliency"],
        options={"saliency": {**SALIENCY, "methods": ["gradcam"], "n_images": 4}},
    )
    assert seen == [{"replicates": [seg], "other_architectures": ["r18"], "n_images": 4}]
    gradcam = summary["models"]["seg"]["saliency_methods"]["gradcam"]
    assert gradcam["repeatability_ssim"] == pytest.approx(1.0, abs=1e-5)  # itself
    assert "repeatability" in gradcam["passes"] and "reproducibility" not in gradcam["passes"]
    assert gradcam["reproducibility_ssim"] is None
    assert "saliency criteria passed" in (tmp_path / "summary.md").read_text()


def test_suite_cli_collects_replicates_per_model(capsys) -> None:
    assert _multi_pairs(["seg=a", "seg=b", "binary=c"], "--replicate") == {
        "seg": ["a", "b"],
        "binary": ["c"],
    }
    with pytest.raises(ValueError, match="--other-architecture expects NAME=CHECKPOINT"):
        _multi_pairs(["seg"], "--other-architecture")
    with pytest.raises(SystemExit):
        main(["audit", "all", "--help"])
    help_text = capsys.readouterr().out
    assert "--replicate" in help_text and "--other-architecture" in help_text
    assert "--saliency-methods" in help_text and "--saliency-limit" in help_text
