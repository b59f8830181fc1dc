"""Domino-style slice discovery: planted-subgroup recovery, EM sanity, scoring, the audit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from spatialspec.audit.base import AuditResult
from spatialspec.audit.slice_eval import (
    evaluate_subgroups,
    fit_on_val_apply,
    known_subgroups,
    precision_at_k,
)
from spatialspec.audit.slices import (
    ErrorAwareMixture,
    SlicesAudit,
    add_slices_parser,
    anti_correlated,
    discover_slices,
    embed,
    rank_slices,
    reduce_embeddings,
    run_slices,
    subgroup_overlap,
)


def planted(
    n: int = 400, separated: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings, labels, scores, spurious attribute and a planted failing subgroup.

    10 % of the images are positives the model misses (score ~0.15; the rest are scored
    correctly). With ``separated`` they are also shifted by 4 SD in three of 20 embedding
    dimensions; otherwise only their errors set them apart. The spurious attribute is built so
    that the planted images are exactly the anti-correlated subgroup.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    y = rng.integers(0, 2, n)
    group = np.zeros(n, bool)
    group[rng.choice(np.flatnonzero(y == 1), n // 10, replace=False)] = True
    if separated:
        x[group, :3] += 4.0
    centre = np.where(y == 1, 0.85, 0.15)
    centre[group] = 0.15
    scores = np.clip(centre + rng.normal(0, 0.08, n), 0.01, 0.99)
    spurious = np.where(y == 1, (~group).astype(float), 0.0)  # positives: spurious unless planted
    return x, y, scores, spurious, group


def _top(result: dict) -> tuple[float, float]:
    return result["top_slice"]["precision"], result["top_slice"]["recall"]


# --------------------------------------------------------------------------- recovery


def test_top_slice_recovers_planted_cluster() -> None:
    x, y, scores, spurious, group = planted(separated=True)
    result = discover_slices(x, y, scores, spurious)
    precision, recall = _top(result)
    assert precision >= 0.8 and recall >= 0.8
    assert result["subgroup"]["n"] == group.sum()
    assert result["top_slice"]["error_rate"] > 0.8
    assert result["top_slice"]["auroc"] > 0.9
    gaps = [r["error_gap"] for r in result["slices"] if r["error_gap"] is not None]
    assert gaps == sorted(gaps, reverse=True)


def test_error_terms_find_a_subgroup_hidden_in_embedding_space() -> None:
    x, y, scores, spurious, _ = planted(separated=False)
    aware = discover_slices(x, y, scores, spurious)
    blind = discover_slices(x, y, scores, spurious, y_weight=0.0, y_hat_weight=0.0)
    precision, recall = _top(aware)
    assert precision >= 0.8 and recall >= 0.8
    assert blind["best_slice"]["f1"] < 0.5  # a plain GMM cuts across the subgroup
    assert aware["top_slice"]["f1"] > blind["best_slice"]["f1"] + 0.4


# --------------------------------------------------------------------------- EM sanity


@pytest.fixture(scope="module")
def coords() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, scores, _, _ = planted(n=300, seed=1)
    return reduce_embeddings(x, 8)[0], y, scores


@pytest.mark.parametrize("init", ["kmeans", "confusion"])
def test_em_responsibilities_and_monotone_objective(coords, init: str) -> None:
    z, y, scores = coords
    model = ErrorAwareMixture(6, n_init=1, init=init, seed=0).fit(z, y, scores)
    resp = model.predict_proba(z, y, scores)
    assert resp.shape == (len(z), 6) and (resp >= 0).all()
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)
    history = np.array(model.history_)
    assert len(history) >= 2
    assert (np.diff(history) >= -1e-8 * np.abs(history[1:])).all()
    assert model.objective_ >= history[-1] - 1e-8
    np.testing.assert_allclose(model.weights_.sum(), 1.0)
    assert model.score(z, y, scores) == pytest.approx(model.objective_)


def test_em_is_seeded(coords) -> None:
    z, y, scores = coords
    a = ErrorAwareMixture(5, seed=3).fit(z, y, scores)
    b = ErrorAwareMixture(5, seed=3).fit(z, y, scores)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.predict_proba(z, y, scores), b.predict_proba(z, y, scores))
    assert a.history_ == b.history_


def test_mixture_rejects_bad_input(coords) -> None:
    z, y, scores = coords
    with pytest.raises(ValueError, match="NaN"):
        ErrorAwareMixture(2).fit(np.where(z > 2, np.nan, z), y, scores)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        ErrorAwareMixture(2).fit(z, y[:-1], scores)
    with pytest.raises(ValueError, match="cannot fill"):
        ErrorAwareMixture(8).fit(z[:5], y[:5], scores[:5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ErrorAwareMixture(2).fit(z, y, scores * 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        ErrorAwareMixture(2).predict(z, y, scores)


# --------------------------------------------------------------------------- scoring


def test_subgroup_overlap_by_hand() -> None:
    members = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    subgroup = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    out = subgroup_overlap(members, subgroup)
    assert (out["n_slice"], out["n_subgroup"], out["n_overlap"]) == (4, 3, 2)
    assert out["precision"] == pytest.approx(2 / 4) and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 2 / (4 + 3))
    known = np.array([1, 1, 0, 1, 1, 1, 1, 0], bool)  # image 2 (member, not in A) unknown
    out = subgroup_overlap(members, subgroup, known)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)
    empty = subgroup_overlap(np.zeros(8, bool), subgroup)
    assert empty["precision"] is None and empty["recall"] == 0.0


def test_anti_correlated_subgroup() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    spurious = np.array([0, 1, 1, 0, np.nan])
    subgroup, known = anti_correlated(labels, spurious)
    assert subgroup.tolist() == [True, False, True, False, False]
    assert known.tolist() == [True, True, True, True, False]


def test_rank_slices_by_hand() -> None:
    # component 0: 4 images, 3 wrong; component 1: 4 images, all right; component 2: empty
    assign = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    resp = np.eye(3)[assign]
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.9, 0.1, 0.2])
    subgroup = np.array([1, 1, 1, 0, 0, 0, 0, 1], bool)
    rows = rank_slices(resp, labels, scores, 0.5, subgroup)
    assert [r["component"] for r in rows] == [0, 1, 2]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    top = rows[0]
    assert top["error_rate"] == pytest.approx(0.75)
    assert top["error_gap"] == pytest.approx(0.75 - 3 / 8)
    assert top["positive_rate"] == pytest.approx(0.5)
    assert top["subgroup"]["precision"] == pytest.approx(3 / 4)
    assert top["subgroup"]["recall"] == pytest.approx(3 / 4)
    assert top["auroc"] == pytest.approx(12 / 16)  # ties count one half
    assert rows[1]["cumulative"]["recall"] == pytest.approx(1.0)
    assert rows[2]["n"] == 0 and rows[2]["error_gap"] is None


# --------------------------------------------------------------------------- Domino's evaluation


def test_precision_at_k_by_hand() -> None:
    membership = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    subgroup = np.array([1, 0, 1, 1, 0, 0], bool)
    assert precision_at_k(membership, subgroup, 1) == 1.0
    assert precision_at_k(membership, subgroup, 2) == 0.5
    assert precision_at_k(membership, subgroup, 4) == pytest.approx(3 / 4)
    assert precision_at_k(membership, subgroup, 25) == pytest.approx(3 / 6)  # all when fewer
    # ties: stable order, the earlier image first
    assert precision_at_k(np.array([0.5, 0.5, 0.1]), np.array([0, 1, 1], bool), 1) == 0.0


def test_evaluate_subgroups_picks_slice_or_complement() -> None:
    from sklearn.metrics import average_precision_score

    # 12 images; slice 0 holds images 0-5, slice 1 images 6-11
    p0 = np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1])
    resp = np.stack([p0, 1 - p0], axis=1)
    inner = np.zeros(12, bool)
    inner[[0, 1, 2, 6]] = True  # mostly slice 0
    out = evaluate_subgroups(resp, {"inner": (inner, None)}, slice_names=["a", "b"])["inner"]
    assert out["slice"] == "a" and out["complement"] is False
    assert out["average_precision"] == pytest.approx(average_precision_score(inner, p0))
    assert out["precision_at_10"] == pytest.approx(4 / 10)
    assert out["precision_at_25"] == pytest.approx(4 / 12)
    assert out["precision"] == pytest.approx(3 / 6) and out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(2 * 3 / (6 + 4))
    assert (out["n_subgroup"], out["n_known"]) == (4, 12)
    assert out["prevalence"] == pytest.approx(4 / 12)

    # with three slices, a subgroup that is "everything but slice 2" is found as a complement
    resp3 = np.zeros((9, 3))
    resp3[np.arange(9), np.repeat([0, 1, 2], 3)] = 0.8
    resp3[resp3 == 0] = 0.1
    outside = np.repeat([True, True, False], 3)
    known = np.ones(9, bool)
    known[0] = False  # unknown images are left out
    best = evaluate_subgroups(resp3, {"outside": (outside, known)})["outside"]
    assert best["slice"] == 2 and best["complement"] is True
    assert best["average_precision"] == pytest.approx(1.0)
    assert best["precision"] == pytest.approx(1.0) and best["recall"] == pytest.approx(1.0)
    assert best["precision_at_10"] == pytest.approx(5 / 8)  # 8 known images, 5 in the group
    assert best["n_known"] == 8
    assert evaluate_subgroups(resp3, {"none": (np.zeros(9, bool), None)})["none"] is None


def test_known_subgroups_and_val_fit() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    groups = known_subgroups(labels, np.array([0, 1, 1, 0, np.nan]))
    assert set(groups) == {"anti_correlated", "spurious == 1", "spurious == 0",
                           "label == 1 & spurious == 0", "label == 0 & spurious == 1"}  # fmt: skip
    assert groups["label == 1 & spurious == 0"][0].tolist() == [True, False, False, False, False]
    assert groups["label == 0 & spurious == 1"][0].tolist() == [False, False, True, False, False]
    assert groups["spurious == 1"][0].tolist() == [False, True, True, False, False]
    assert groups["spurious == 0"][0].tolist() == [True, False, False, True, False]
    assert groups["spurious == 0"][1].tolist() == [True, True, True, True, False]
    x, y, scores, _, _ = planted(n=400, seed=0)
    xt, yt, st, spt, gt = planted(n=300, seed=5)
    resp = fit_on_val_apply((x, y, scores), (xt, yt, st))
    assert resp.shape == (300, 8)
    out = evaluate_subgroups(resp, known_subgroups(yt, spt))
    assert out["anti_correlated"]["average_precision"] > 0.9  # the planted group, unseen images
    assert out["anti_correlated"]["n_subgroup"] == gt.sum()


# --------------------------------------------------------------------------- the audit


def _audit_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spatialspec")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit").add_subparsers(dest="audit_command", required=True)
    add_slices_parser(audit)
    return parser.parse_args(argv)


def test_cli_threshold_flag() -> None:
    args = _audit_args(["audit", "slices", "--checkpoint", "c", "--out", "o", "--threshold", "0.3"])
    assert args.threshold == 0.3 and args.n_slices == 8 and args.split == "test"
    assert _audit_args(["audit", "slices", "--checkpoint", "c", "--out", "o"]).threshold == "val"
    with pytest.raises(SystemExit):
        _audit_args(["audit", "slices", "--checkpoint", "c", "--out", "o", "--threshold", "x"])


def test_cli_modality_flags() -> None:
    base = ["audit", "slices", "--checkpoint", "c", "--out", "o"]
    args = _audit_args(base)
    assert args.modalities == ("image", "text", "metadata") and args.modality_weights is None
    assert args.metadata_columns is None and args.text_column is None
    args = _audit_args([*base, "--modalities", "image,text", "--modality-weights", "text=2",
                        "--metadata-columns", "view, age", "--text-encoder", "/m"])  # fmt: skip
    assert args.modalities == ("image", "text") and args.modality_weights == {"text": 2.0}
    assert args.metadata_columns == ["view", "age"] and args.text_encoder == "/m"
    for bad in (["--modalities", "audio"], ["--modality-weights", "text=-1"]):
        with pytest.raises(SystemExit):
            _audit_args([*base, *bad])


def test_audit_slices_writes_files(tiny_checkpoints, tiny_synthetic: Path, tmp_path: Path) -> None:
    ckpt = str(tiny_checkpoints["binary"])
    args = _audit_args(["audit", "slices", "--checkpoint", ckpt, "--manifest",
                        str(tiny_synthetic), "--out", str(tmp_path)])  # fmt: skip
    result = run_slices(args)
    assert {p.name for p in tmp_path.iterdir()} == {"slices.json", "slices.md", "slices.png"}
    saved = json.loads((tmp_path / "slices.json").read_text())
    expected = {"settings", "overall", "subgroup", "slices", "top_slice", "best_slice", "images",
                "metadata", "note", "subgroup_evaluation", "modality_evaluation"}  # fmt: skip
    assert set(saved) == expected
    modal = saved["modality_evaluation"]
    assert set(modal["sets"]) == {"image", "text", "metadata", "combined"}
    assert modal["sets"]["combined"]["modalities"] == ["image", "text", "metadata"]
    assert all(ev["fit_split"] == "val" for ev in modal["sets"].values())
    assert modal["modalities"]["metadata"]["columns"] == ["view", "age", "sex"]
    assert modal["modalities"]["text"]["column"] == "report"
    for ev in modal["sets"].values():  # slices named by rank, the private arrays left out
        assert "_resp" not in ev and sum(r["n"] for r in ev["slices"]) == 40
        assert ev["subgroups"]["anti_correlated"]["n_subgroup"] == 4
    assert modal["sets"]["image"]["subgroups"] == saved["subgroup_evaluation"]["subgroups"]
    headline = SlicesAudit().headline(AuditResult("slices", result))
    assert set(headline["slices_ap"]) == {"image", "text", "metadata", "combined"}
    cells = headline["slices_ap_cells"]["label == 0 & spurious == 1"]
    assert cells["image"] == modal["sets"]["image"]["subgroups"]["label == 0 & spurious == 1"][
        "average_precision"]  # fmt: skip
    assert headline["slices_ap"]["text"] == modal["sets"]["text"]["subgroups"][
        "anti_correlated"]["average_precision"]  # fmt: skip
    assert {"enriched", "depleted", "n"} <= set(saved["slices"][0]["description"])
    assert "| combined | anti_correlated |" in (tmp_path / "slices.md").read_text()
    evaluation = saved["subgroup_evaluation"]
    assert evaluation["fit_split"] == "val" and evaluation["eval_split"] == "test"
    assert set(evaluation["subgroups"]) >= {"anti_correlated", "spurious == 1", "spurious == 0"}
    anti = evaluation["subgroups"]["anti_correlated"]
    assert anti["n_subgroup"] == 4 and 0.0 <= anti["average_precision"] <= 1.0
    assert {"slice", "complement", "precision_at_10", "precision_at_25", "f1"} <= set(anti)
    assert "Domino's evaluation" in (tmp_path / "slices.md").read_text()
    assert saved["overall"]["n"] == 40 and len(saved["images"]) == 40
    assert saved["subgroup"]["n"] == 4  # 2 positives without + 2 negatives with the tube
    assert len(saved["slices"]) == 8 and saved["top_slice"]["rank"] == 1
    assert {"precision", "recall", "auroc"} <= set(saved["top_slice"])
    assert saved["settings"]["threshold_source"].startswith("val")
    assert sum(r["n"] for r in saved["slices"]) == 40
    assert "CLIP" in (tmp_path / "slices.md").read_text()
    assert (tmp_path / "slices.png").read_bytes()[:4] == b"\x89PNG"
    assert result["metadata"]["method"] == "binary"


def test_embed_encoder_and_decoder(tiny_checkpoints, tiny_synthetic: Path) -> None:
    from spatialspec.audit.common import load_audit_set, load_model

    method, _, data = load_model(tiny_checkpoints["seg"], tiny_synthetic)
    images = load_audit_set(data, "test", limit=6).images
    enc, scores = embed(method, images, batch_size=4)
    dec, _ = embed(method, images, batch_size=4, features="decoder")
    assert enc.shape[0] == dec.shape[0] == 6 and enc.shape[1] != dec.shape[1]
    np.testing.assert_allclose(scores, method.score(images).detach().numpy(), atol=1e-6)
    binary, _, _ = load_model(tiny_checkpoints["binary"], tiny_synthetic)
    with pytest.raises(ValueError, match="no decoder"):
        embed(binary, images, features="decoder")


def test_audit_without_report_or_metadata_and_on_val(
    tiny_checkpoints, tiny_synthetic: Path, tmp_path: Path
) -> None:
    import pandas as pd

    from spatialspec.audit.slices import audit_slices, slices_ap

    frame = pd.read_csv(tiny_synthetic)
    bare = tiny_synthetic.parent / "bare_manifest.csv"  # beside the images: relative paths hold
    frame.drop(columns=["report", "view", "age", "sex"]).to_csv(bare, index=False)
    result = audit_slices(tiny_checkpoints["binary"], bare)
    modal = result["modality_evaluation"]
    assert set(modal["sets"]) == {"image"}
    assert modal["modalities"]["text"]["status"] == "skipped"
    assert "'report'" in modal["modalities"]["text"]["reason"]
    assert modal["modalities"]["metadata"]["status"] == "skipped"
    assert slices_ap(result)["text"] is None and slices_ap(result)["image"] is not None
    on_val = audit_slices(tiny_checkpoints["binary"], tiny_synthetic, split="val", n_slices=4)
    image = on_val["modality_evaluation"]["sets"]["image"]
    assert image["fit_split"] == "eval" and "audited split is val" in image["protocol"]
    assert on_val["subgroup_evaluation"]["fit_split"] == "val"  # fitted on the audited split
