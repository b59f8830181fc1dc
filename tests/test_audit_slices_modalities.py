"""Slices in text and metadata: featurisers, block weights, the multimodal Domino evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatialspec.audit.embeddings import WhitenedPCA
from spatialspec.audit.mixture import ErrorAwareMixture
from spatialspec.audit.modalities import (
    ENCODER_MISSING,
    MISSING,
    MetadataFeaturizer,
    SentenceEncoderFeaturizer,
    TfidfTextFeaturizer,
    combine_blocks,
    modality_blocks,
    parse_modalities,
    parse_weights,
    text_featurizer,
)
from spatialspec.audit.slice_eval import SplitData, evaluate_modality_sets

# --------------------------------------------------------------------------- metadata


def test_metadata_one_hot_standardise_and_missing_by_hand() -> None:
    fit = pd.DataFrame(
        {"view": ["AP", "PA", "AP", None], "age": [20, 40, np.nan, 60], "sex": ["F", "M", "F", "M"]}
    )
    featurizer = MetadataFeaturizer(["view", "age", "sex"]).fit(fit)
    assert featurizer.kinds_ == {"view": "categorical", "age": "numeric", "sex": "categorical"}
    assert featurizer.feature_names_ == [
        f"view={MISSING}",
        "view=AP",
        "view=PA",
        "age",
        f"age={MISSING}",
        "sex=F",
        "sex=M",
    ]
    x = featurizer.transform(fit, "fit")
    mean, sd = 40.0, np.std([20, 40, 60])  # over the non-missing ages, SD with ddof 0
    np.testing.assert_allclose(x[:, 3], [(20 - mean) / sd, 0.0, 0.0, (60 - mean) / sd])
    np.testing.assert_array_equal(x[:, 4], [0, 0, 1, 0])  # missing age: the mean + indicator
    np.testing.assert_array_equal(x[:, :3], [[0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    counts = featurizer.counts_["fit"]
    assert counts["view"]["n_missing"] == 1 and counts["age"]["n_missing"] == 1

    apply = pd.DataFrame({"view": ["LL", "PA", ""], "age": ["30", "", "x"], "sex": ["F"] * 3})
    y = featurizer.transform(apply, "test")
    np.testing.assert_array_equal(y[:, :3], [[0, 0, 0], [0, 0, 1], [1, 0, 0]])  # LL unseen
    np.testing.assert_allclose(y[:, 3], [(30 - mean) / sd, 0.0, 0.0])
    test = featurizer.counts_["test"]
    assert (test["view"]["n_missing"], test["view"]["n_unseen"]) == (1, 1)
    assert (test["age"]["n_missing"], test["age"]["n_unseen"]) == (1, 1)  # "x" is not a number
    assert featurizer.summary()["counts"]["test"]["view"]["n"] == 3


def test_metadata_rejects_reserved_and_absent_columns() -> None:
    with pytest.raises(ValueError, match="label"):
        MetadataFeaturizer(["label", "view"])
    frame = pd.DataFrame({"view": ["AP"]})
    frame.attrs["manifest_path"] = "/data/manifest.csv"
    with pytest.raises(ValueError, match=r"/data/manifest.csv has no metadata column\(s\) age"):
        MetadataFeaturizer(["view", "age"]).fit(frame)


# --------------------------------------------------------------------------- text

REPORTS = [
    "Right chest tube in place. No pneumothorax.",
    "Small left apical pneumothorax. Heart size is normal.",
    "Heart size is normal. No focal consolidation.",
    "Left chest tube in place. Heart size is normal.",
    "No pneumothorax. No pleural effusion.",
    "Moderate right pneumothorax. No pleural effusion.",
] * 5


def test_tfidf_svd_matches_sklearn_and_is_deterministic() -> None:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    a = TfidfTextFeaturizer(n_components=4, seed=1).fit(REPORTS).transform(REPORTS[:7])
    b = TfidfTextFeaturizer(n_components=4, seed=1).fit(REPORTS).transform(REPORTS[:7])
    assert a.shape == (7, 4)
    np.testing.assert_array_equal(a, b)
    tfidf = TfidfVectorizer(
        token_pattern=r"(?u)\b[a-z][a-z]+\b", ngram_range=(1, 2), min_df=2, sublinear_tf=True
    )
    svd = TruncatedSVD(4, random_state=1).fit(tfidf.fit_transform(REPORTS))
    np.testing.assert_allclose(a, svd.transform(tfidf.transform(REPORTS[:7])), atol=1e-12)
    big = TfidfTextFeaturizer(n_components=500).fit(REPORTS)
    assert len(big.tfidf_.vocabulary_) - 1 > len(REPORTS) - 1
    assert big.transform(REPORTS).shape[1] == len(REPORTS) - 1  # capped at N - 1


def test_text_block_counts_missing_and_skips_an_empty_vocabulary() -> None:
    fit = pd.DataFrame({"report": [*REPORTS[:5], None], "view": ["AP", "PA"] * 3})
    apply = pd.DataFrame({"report": ["", "No pneumothorax."], "view": ["AP", "PA"]})
    fit_b, apply_b, info = modality_blocks(fit, apply, ("text", "metadata"), n_components=3)
    assert fit_b["text"].shape == (6, 3) and apply_b["text"].shape == (2, 3)
    assert info["text"]["n_missing"] == {"fit": 1, "apply": 1}
    assert info["metadata"]["columns"] == ["view"]  # the default columns present
    empty = pd.DataFrame({"report": [""] * 4, "view": ["AP"] * 4})
    _, blocks, info = modality_blocks(empty, empty, ("text",))
    assert "text" not in blocks and info["text"]["status"] == "skipped"
    assert "vocabulary" in info["text"]["reason"]
    _, blocks, info = modality_blocks(empty[["view"]], empty[["view"]], ("text",))
    assert info["text"]["status"] == "skipped" and "'report'" in info["text"]["reason"]
    with pytest.raises(ValueError, match="no text column 'notes'"):
        modality_blocks(empty, empty, ("text",), text_column="notes")


def test_sentence_encoder_needs_a_folder_and_a_library(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        SentenceEncoderFeaturizer(tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"spatialspec\[text\]"):
        text_featurizer(tmp_path).fit(["a report"])
    assert "TF-IDF" in ENCODER_MISSING


def _tiny_bert(folder: Path) -> None:
    """A randomly initialised 1-layer BERT with a word-level vocabulary, saved offline."""
    transformers = pytest.importorskip(
        "transformers", reason="the sentence-encoder path needs transformers (spatialspec[text])"
    )
    words = sorted({w.strip(".").lower() for r in REPORTS for w in r.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(folder)


def test_sentence_encoder_on_a_tiny_local_model(tmp_path: Path) -> None:
    _tiny_bert(tmp_path / "bert")
    featurizer = text_featurizer(tmp_path / "bert").fit(REPORTS)
    a, b = featurizer.transform(REPORTS[:4]), featurizer.transform(REPORTS[:4])
    assert a.shape == (4, 8) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a[0], a[1])  # different reports, different embeddings
    assert featurizer.summary()["backend"] in ("sentence-transformers", "transformers")


# --------------------------------------------------------------------------- weights


def test_weights_are_shares_of_the_embedding_term() -> None:
    rng = np.random.default_rng(0)
    image, meta = rng.normal(size=(60, 30)), rng.normal(size=(60, 3))
    blocks = {"image": image, "metadata": meta}
    out = combine_blocks(blocks, blocks, {"image": 1, "metadata": 3}, n_components=16)
    assert (out.blocks["image"]["dims"], out.blocks["metadata"]["dims"]) == (16, 3)
    # λ_b = D · share_b / d_b with D = 16: image 16 · 1/4 / 16, metadata 16 · 3/4 / 3
    np.testing.assert_allclose(out.dim_weights, [0.25] * 16 + [4.0] * 3)
    assert (out.dim_weights * np.r_[[1] * 16 + [1] * 3]).sum() == pytest.approx(16.0)
    np.testing.assert_allclose(out.z_fit[:, 16:], WhitenedPCA(16).fit_transform(meta))
    alone = combine_blocks({"image": image}, {"image": image}, n_components=16)
    np.testing.assert_array_equal(alone.dim_weights, np.ones(16))  # image-only: weight 1 each
    dropped = combine_blocks(blocks, blocks, {"metadata": 0})
    assert list(dropped.blocks) == ["image"]
    with pytest.raises(ValueError, match="positive weight"):
        combine_blocks(blocks, blocks, {"image": 0, "metadata": 0})


def test_a_weight_counts_a_dimension_as_repeated_and_scaling_does_nothing() -> None:
    rng = np.random.default_rng(1)
    z = np.vstack([rng.normal(size=(60, 3)), rng.normal(2.0, 1.0, size=(60, 3))])
    y = (np.arange(120) % 2).astype(float)
    y_hat = np.clip(y * 0.8 + rng.uniform(0, 0.2, 120), 0, 1)
    args = {"n_init": 1, "seed": 0}
    doubled = ErrorAwareMixture(2, dim_weights=[2, 2, 2], **args).fit(z, y, y_hat)
    repeated = ErrorAwareMixture(2, **args).fit(np.hstack([z, z]), y, y_hat)
    np.testing.assert_allclose(
        doubled.predict_proba(z, y, y_hat),
        repeated.predict_proba(np.hstack([z, z]), y, y_hat),
        atol=1e-8,
    )
    assert doubled.objective_ == pytest.approx(repeated.objective_)
    plain = ErrorAwareMixture(2, **args).fit(z, y, y_hat).predict_proba(z, y, y_hat)
    scaled = ErrorAwareMixture(2, reg_covar=0.0, **args).fit(z * [5, 1, 1], y, y_hat)
    np.testing.assert_allclose(scaled.predict_proba(z * [5, 1, 1], y, y_hat), plain, atol=1e-3)
    with pytest.raises(ValueError, match="positive"):
        ErrorAwareMixture(2, dim_weights=[1, 0, 1])
    with pytest.raises(ValueError, match="2 dim_weights for 3"):
        ErrorAwareMixture(2, dim_weights=[1, 1]).fit(z, y, y_hat)


def test_parse_modalities_and_weights() -> None:
    assert parse_modalities("image, text") == ("image", "text")
    assert parse_weights("image=1,text=2.5") == {"image": 1.0, "text": 2.5}
    for bad in ("image=x", "image", "audio=1", "text=-1"):
        with pytest.raises(ValueError):
            parse_weights(bad)
    with pytest.raises(ValueError, match="modalities must be"):
        parse_modalities("image,audio")


# --------------------------------------------------------------------------- evaluation


def _text_carries_the_subgroup(n: int, seed: int) -> tuple[SplitData, np.ndarray, list[str]]:
    """Image noise; two equally wrong groups of positives, only one with the tube in its report.

    G (10 %: positives scored low, tube mentioned in 90 % of reports) is the anti-correlated
    subgroup; H (10 %: positives scored just as low, no tube) is not. Labels and predictions
    cannot tell G from H; the reports can.
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int)
    group = np.zeros(n, int)  # 0: scored right, 1: G, 2: H
    group[: n // 10], group[n // 10 : n // 5] = 1, 2
    scores = np.where(y == 1, 0.85, 0.15) + rng.normal(0, 0.05, n)
    scores[group > 0] = 0.15 + rng.normal(0, 0.05, (group > 0).sum())
    spurious = np.where(y == 1, (group != 1).astype(float), 0.0)  # A == G
    tube = np.where(group == 1, rng.uniform(size=n) < 0.9, rng.uniform(size=n) < 0.05)
    reports = [("Right chest tube in place. " if t else "") + "Heart size is normal." for t in tube]
    image = rng.normal(size=(n, 20))
    return SplitData({"image": image}, y, np.clip(scores, 0.01, 0.99), spurious), group, reports


def test_text_slices_recover_a_subgroup_image_noise_cannot() -> None:
    val, _, val_reports = _text_carries_the_subgroup(400, seed=0)
    test, group, test_reports = _text_carries_the_subgroup(400, seed=1)
    text = TfidfTextFeaturizer(8).fit(val_reports)
    val.blocks["text"], test.blocks["text"] = (
        text.transform(val_reports),
        text.transform(test_reports),
    )
    sets = {"image": ("image",), "text": ("text",), "combined": ("image", "text")}
    out = evaluate_modality_sets(val, test, sets, mixture={"n_slices": 6, "n_components": 8})
    ap = {name: out[name]["subgroups"]["anti_correlated"]["average_precision"] for name in sets}
    assert out["text"]["subgroups"]["anti_correlated"]["n_subgroup"] == (group == 1).sum()
    assert ap["text"] > 0.9 and ap["image"] < 0.75  # image: G and H in one slice
    assert ap["combined"] > ap["image"] + 0.15
    assert all(out[name]["fit_split"] == "val" for name in sets)
    assert out["combined"]["blocks"]["text"]["share"] == pytest.approx(0.5)


def test_categorical_metadata_enters_as_categorical_factors() -> None:
    frame = pd.DataFrame(
        {"view": ["AP", "PA", "AP", "LL"], "age": [20, np.nan, 40, 60], "sex": list("FMFM")}
    )
    featurizer = MetadataFeaturizer(["view", "age", "sex"]).fit(frame)
    mixed = featurizer.mixed(featurizer.transform(frame))
    np.testing.assert_allclose(mixed.numeric[:, 0], featurizer.transform(frame)[:, 3])
    assert mixed.groups == ["view"] * 3 + [f"age={MISSING}"] * 2 + ["sex"] * 2
    for group in set(mixed.groups):  # every variable one-hot: one 1 per row
        cols = [j for j, g in enumerate(mixed.groups) if g == group]
        np.testing.assert_array_equal(mixed.onehot[:, cols].sum(axis=1), 1.0)
    out = combine_blocks({"metadata": mixed}, {"metadata": mixed}, n_components=6)
    info = out.blocks["metadata"]
    assert (info["dims"], info["categorical"]) == (1, 3)  # age; view, age missing, sex
    np.testing.assert_allclose(out.dim_weights, [6 / 4])  # D / (1 dimension + 3 variables)
    np.testing.assert_allclose(out.onehot_weights, [6 / 4] * 7)


def test_categorical_factors_in_the_mixture() -> None:
    rng = np.random.default_rng(2)
    n = 200
    cat = rng.integers(0, 3, n)  # a 3-valued variable; the embedding is noise
    onehot = np.eye(3)[cat]
    z = rng.normal(size=(n, 2))
    y, y_hat = np.zeros(n), np.full(n, 0.5)
    model = ErrorAwareMixture(
        2, y_weight=0.0, y_hat_weight=0.0, n_init=2, seed=0, categorical_weights=[3.0] * 3
    )
    model.fit(z, y, y_hat, onehot)
    np.testing.assert_allclose(model.cat_probs_.sum(axis=1), 1.0, atol=1e-5)  # EPS-clipped zeros
    history = np.array(model.history_)
    assert (np.diff(history) >= -1e-9 * np.abs(history[1:])).all()
    assign = model.predict(z, y, y_hat, onehot)
    for value in range(3):  # the slices follow the categorical variable, not the noise
        assert np.bincount(assign[cat == value], minlength=2).max() == (cat == value).sum()
    assert len(set(assign)) == 2
    # a row with no category (a value unseen when fitting) adds nothing: π_k N(z | μ_k, σ²_k)
    from scipy.stats import norm

    unseen = model.predict_proba(z[:3], y[:3], y_hat[:3], np.zeros((3, 3)))
    dens = model.weights_ * np.prod(
        norm.pdf(z[:3, None], model.means_[None], np.sqrt(model.variances_[None])), axis=2
    )
    np.testing.assert_allclose(unseen, dens / dens.sum(axis=1, keepdims=True), rtol=1e-8)
    with pytest.raises(ValueError, match="one-hot"):
        model.fit(z, y, y_hat, onehot * 2)
