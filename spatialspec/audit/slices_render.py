"""The slices audit's report: Markdown (settings, slice table, evaluation per modality,
descriptions) and the figure (embedding scatter, AP per modality, the top slice's images)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from spatialspec.audit.base import fmt
from spatialspec.audit.describe import description_text
from spatialspec.audit.slices_discover import anti_correlated

__all__ = [
    "image_rows",
    "modality_evaluation_markdown",
    "plot_slices",
    "slices_markdown",
    "top_slice_examples",
]

#: How many example images of the top slice the figure shows.
N_EXAMPLES = 8

#: Columns of the evaluation tables (keys of ``evaluate_subgroups``' rows).
_TABLE_KEYS = (
    "average_precision",
    "prevalence",
    "precision_at_10",
    "precision_at_25",
    "precision",
    "recall",
    "f1",
)
#: The subgroups the figure shows: the anti-correlated subgroup and its two cells.
A_GROUPS = ("anti_correlated", "label == 1 & spurious == 0", "label == 0 & spurious == 1")
#: Slices per modality set whose descriptions the Markdown lists (by error gap).
N_DESCRIBED = 3


def slices_markdown(result: dict[str, Any]) -> str:
    """The slice report as Markdown: settings, ranked slices, Domino's evaluation, descriptions."""
    s, o = result["settings"], result["overall"]
    lines = [
        "# Slice discovery (Domino-style error-aware mixture)",
        "",
        f"- {o['n']} images ({o['n_positive']} positive), split `{s.get('split', '?')}`; "
        f"overall error rate {fmt(o['error_rate'])} at threshold {s['threshold']:.3f} "
        f"({s.get('threshold_source', 'given')})",
        f"- {s['n_slices']} slices over {s['n_components']} whitened PCA dimensions of the "
        f"{s.get('features', 'encoder')} embeddings; γ (label) = {s['y_weight']:g}, "
        f"γ̂ (prediction) = {s['y_hat_weight']:g}; EM {s['em_iterations']} iterations "
        f"({'converged' if s['em_converged'] else 'not converged'}), {s['n_init']} inits",
        "- ranked by error gap (slice error rate − overall error rate); Ŷ enters the mixture as "
        "the soft predicted probability",
        *_subgroup_lines(result),
        "",
        "Slices of the image embeddings, fitted on this split:",
        "",
        *_slice_table(result),
        "",
        *modality_evaluation_markdown(result.get("modality_evaluation")),
        result.get("note", ""),
    ]
    meta = result.get("metadata")
    if meta:
        lines += [
            "",
            f"Checkpoint `{meta.get('checkpoint')}`, git commit "
            f"`{meta.get('git_commit')}`, created {meta.get('created')}.",
        ]
    return "\n".join(lines) + "\n"


def _subgroup_lines(result: dict[str, Any]) -> list[str]:
    sub = result.get("subgroup")
    if not sub:
        return ["- spurious attribute unknown: slices are not scored against the shortcut"]
    top, best = result["top_slice"], result["best_slice"] or {}
    return [
        f"- anti-correlated subgroup A ({sub['name']}): {sub['n']} of {sub['n_known']} images "
        "with a known attribute",
        f"- **top slice**: precision {fmt(top.get('precision'))}, recall "
        f"{fmt(top.get('recall'))} for A (AUROC of its responsibility "
        f"{fmt(top.get('auroc'))})",
        f"- best-matching slice (rank {best.get('rank', '–')}, highest F1 — an oracle view): "
        f"precision {fmt(best.get('precision'))}, recall {fmt(best.get('recall'))}",
    ]


def _slice_table(result: dict[str, Any]) -> list[str]:
    scored = result.get("subgroup") is not None
    head = "| rank | n | positives | mean score | error rate | error gap |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    if scored:
        head += " precision A | recall A | cum. recall A | AUROC A |"
        rule += "---:|---:|---:|---:|"
    lines = [head + " description |", rule + "---|"]
    for r in result["slices"]:
        cells = [
            str(r["rank"]),
            str(r["n"]),
            str(r["n_positive"]),
            fmt(r["mean_score"]),
            fmt(r["error_rate"]),
            fmt(r["error_gap"]),
        ]
        if scored:
            cells += [
                fmt(r["subgroup"]["precision"]),
                fmt(r["subgroup"]["recall"]),
                fmt(r["cumulative"]["recall"]),
                fmt(r["auroc"]),
            ]
        cells.append(description_text(r.get("description"), top=2))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def modality_evaluation_markdown(evaluation: dict[str, Any] | None) -> list[str]:
    """Markdown lines: modalities used, the modality × subgroup table, slice descriptions."""
    if not evaluation:
        return []
    sets = evaluation["sets"]
    lines = [
        "## Against known subgroups, per modality (Domino's evaluation)",
        "",
        f"Protocol: {evaluation['protocol']}. Per subgroup, the slice or its complement whose "
        "membership probability has the highest average precision (AP); slices numbered by "
        "their error-gap rank on the evaluated split, within each modality set; P@k: share of "
        "the k most-member images in the subgroup; precision / recall / F1 of the hard "
        "assignment; prevalence = AP of a random ranking.",
        "",
        *_modality_lines(evaluation),
        "",
        "| modality | subgroup | slice | AP | prevalence | P@10 | P@25 | precision | recall "
        "| F1 | n |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, ev in sets.items():
        if not ev["subgroups"]:
            lines.append(f"| {name} | (attribute unknown) | – | – | – | – | – | – | – | – | 0 |")
        for group, r in ev["subgroups"].items():
            lines.append(_evaluation_row(name, group, r))
    return [
        *lines,
        "",
        *_description_lines(sets, evaluation.get("describer", {}).get("against", "?")),
        "",
    ]


def _modality_lines(evaluation: dict[str, Any]) -> list[str]:
    """One bullet per modality: used (factors, weight in combined) or skipped (why)."""
    alone = {
        ev["modalities"][0]: ev["blocks"][ev["modalities"][0]]
        for ev in evaluation["sets"].values()
        if len(ev["modalities"]) == 1
    }
    combined = evaluation["sets"].get("combined", {}).get("blocks", {})
    lines = []
    for name, info in evaluation["modalities"].items():
        if info.get("status") != "used":
            lines.append(f"- **{name}**: skipped ({info.get('reason', '?')})")
            continue
        lines.append(
            f"- **{name}**: {_source(name, info)}; {_factors(alone.get(name))}"
            f"{_share(combined.get(name))}"
        )
    if combined:
        lines.append(
            "- **combined**: " + " + ".join(combined) + "; a modality's weight is its share of "
            "the embedding term: each of its d factors gets log-likelihood weight D · share / d "
            "(D = n_components)"
        )
    return lines


def _factors(block: dict[str, Any] | None) -> str:
    if not block:
        return "?"
    cat = block.get("categorical") or 0
    return f"{block['dims']} whitened dimensions" + (f" + {cat} categorical" if cat else "")


def _share(block: dict[str, Any] | None) -> str:
    if not block:
        return ""
    return (
        f"; in combined: weight {block['weight']:g}, share {block['share']:.2f}, "
        f"{block['dim_weight']:.2f} per factor"
    )


def _source(name: str, info: dict[str, Any]) -> str:
    if name == "image":
        return f"pooled {info.get('features', 'encoder')} embeddings ({info['embedding_dim']}-d)"
    if name == "text":
        missing = info["n_missing"]
        what = (
            f"`{info['column']}` by TF-IDF ({info['vocabulary']} terms) + SVD"
            if info["kind"] == "tfidf+svd"
            else f"`{info['column']}` by the sentence encoder `{info['path']}`"
        )
        return f"{what}; {missing['fit']} / {missing['apply']} missing (fit / evaluated)"
    counts = info["counts"].get("apply", {})
    parts = [
        f"`{c}` ({info['kinds'][c]}; {counts.get(c, {}).get('n_missing', 0)} missing, "
        f"{counts.get(c, {}).get('n_unseen', 0)} unseen)"
        for c in info["columns"]
    ]
    return "columns " + ", ".join(parts)


def _evaluation_row(name: str, group: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"| {name} | {group} | – (empty) | – | – | – | – | – | – | – | 0 |"
    which = f"{'not ' if r['complement'] else ''}slice {r['slice']}"
    cells = [name, group, which] + [fmt(r[k]) for k in _TABLE_KEYS]
    return "| " + " | ".join(cells) + f" | {r['n_subgroup']} |"


def _description_lines(sets: dict[str, Any], against: str) -> list[str]:
    """Per modality set: the top slices by error gap and those chosen for a subgroup."""
    lines = [
        "### Slice descriptions (report tokens and metadata values, slice vs its reference)",
        "",
        "Counts are images with the token or value in the slice vs in its reference: "
        f"{against}. Listed when Fisher's exact test (one-sided, Bonferroni over the tokens and "
        "values) gives p < 0.05, ranked by the end of the log-odds ratio's 95 % interval "
        "nearest 0; `[label y]`: described within label y.",
        "",
    ]
    for name, ev in sets.items():
        chosen = {r["slice"] for r in ev["subgroups"].values() if r and not r["complement"]}
        rows = [r for r in ev["slices"] if r["rank"] <= N_DESCRIBED or r["rank"] in chosen]
        lines += [f"**{name}**", ""]
        for r in rows:
            mark = " (best for a subgroup)" if r["rank"] in chosen else ""
            lines.append(
                f"- slice {r['rank']}{mark}: n = {r['n']}, error rate {fmt(r['error_rate'])}, "
                f"gap {fmt(r['error_gap'])} — {description_text(r.get('description'))}"
            )
        lines.append("")
    return lines


# --------------------------------------------------------------------------- figure


def image_rows(
    result: dict[str, Any],
    ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    spurious: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per image: slice rank, its responsibility, the first two PCA coordinates."""
    resp, coords, ranks = result["_resp"], result["_coords"], result["_assign"]
    subgroup, known = anti_correlated(labels, spurious)
    pcs = np.pad(coords[:, :2], ((0, 0), (0, max(0, 2 - coords.shape[1]))))
    return [
        {
            "image_id": ids[i],
            "label": int(labels[i]),
            "spurious": float(spurious[i]) if known[i] else None,
            "score": float(scores[i]),
            "slice": int(ranks[i]),
            "responsibility": float(resp[i].max()),
            "anti_correlated": bool(subgroup[i]) if known[i] else None,
            "pc1": float(pcs[i, 0]),
            "pc2": float(pcs[i, 1]),
        }
        for i in range(len(ids))
    ]


def top_slice_examples(
    result: dict[str, Any], images: torch.Tensor, ids: list[str]
) -> dict[str, Any]:
    """Up to :data:`N_EXAMPLES` images of the top slice, most responsible first."""
    top = result["slices"][0]["component"]
    resp = result["_resp"][:, top]
    members = np.flatnonzero(result["_assign"] == 1)
    chosen = members[np.argsort(-resp[members], kind="stable")][:N_EXAMPLES]
    return {
        "index": chosen,
        "images": images[chosen].float().numpy(),
        "image_ids": [ids[i] for i in chosen],
    }


def plot_slices(result: dict[str, Any], examples: dict[str, Any] | None = None) -> bytes:
    """PNG bytes: PCA scatter by slice (A circled), AP per modality, the top slice's examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_ex = 0 if examples is None else len(examples["index"])
    sets = (result.get("modality_evaluation") or {}).get("sets", {})
    width = 6.5 + (3.6 if sets else 0) + (3.2 if n_ex else 0)
    fig = plt.figure(figsize=(width, 5.0), dpi=110)
    cols = 4 + (3 if sets else 0) + (2 if n_ex else 0)
    grid = fig.add_gridspec(4, cols)
    _scatter(fig.add_subplot(grid[:, :4]), result)
    if sets:
        _ap_bars(fig.add_subplot(grid[:, 4:7]), sets)
    for j in range(n_ex):
        ax = fig.add_subplot(grid[j // 2, cols - 2 + j % 2])
        _example(ax, examples["images"][j], result["images"][examples["index"][j]])
    if n_ex:
        fig.text(
            1 - 1.6 / width, 0.98, "top slice, most responsible first", ha="center", fontsize=8
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _ap_bars(ax: Any, sets: dict[str, Any]) -> None:
    """AP of the best slice or complement for A and its two cells (bars) per modality (groups)."""
    groups = [g for g in A_GROUPS if any(g in ev["subgroups"] for ev in sets.values())]
    if not groups:
        ax.text(0.5, 0.5, "spurious attribute unknown", ha="center", transform=ax.transAxes)
        return
    width = 0.8 / len(groups)
    x = np.arange(len(sets))
    for j, group in enumerate(groups):
        rows = [ev["subgroups"].get(group) for ev in sets.values()]
        ap = [np.nan if r is None else r["average_precision"] for r in rows]
        prev = [np.nan if r is None else r["prevalence"] for r in rows]
        at = x + (j - (len(groups) - 1) / 2) * width
        bars = ax.bar(at, ap, width, label=group)
        ax.scatter(
            at,
            prev,
            marker="_",
            s=80,
            color="black",
            zorder=3,
            label="prevalence" if j == 0 else None,
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(x, list(sets), fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("AP of best slice or complement (fit on val)")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2)
    ax.set_title("recovery of A and its cells", fontsize=9)


def _scatter(ax: Any, result: dict[str, Any]) -> None:
    """PC1/PC2 of the embeddings, one colour per slice rank, A circled in black."""
    import matplotlib

    rows = result.get("images") or []
    if not rows:
        ax.text(0.5, 0.5, "no per-image rows", ha="center", transform=ax.transAxes)
        return
    pc = np.array([[r["pc1"], r["pc2"]] for r in rows])
    rank = np.array([r["slice"] for r in rows])
    cmap = matplotlib.colormaps["tab10"]
    for k in np.unique(rank)[::-1]:  # the top slice drawn last, on top
        sel = rank == k
        ax.scatter(*pc[sel].T, s=7, color=cmap((k - 1) % 10), label=f"slice {k}", alpha=0.7)
    anti = np.array([bool(r["anti_correlated"]) for r in rows])
    if anti.any():
        ax.scatter(
            *pc[anti].T,
            s=26,
            facecolors="none",
            edgecolors="black",
            linewidths=0.6,
            label="anti-correlated (A)",
        )
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    handles, labels = ax.get_legend_handles_labels()
    n = len(np.unique(rank))  # slices were drawn in reverse rank order
    order = [*range(n - 1, -1, -1), *range(n, len(handles))]
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=6, loc="best")
    ax.set_title("image embeddings by slice (rank 1 = largest error gap)", fontsize=9)


def _example(ax: Any, image: np.ndarray, row: dict[str, Any]) -> None:
    """One example image titled with label, score and spurious attribute."""
    img = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    if img.ndim == 3:
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-8)
    ax.imshow(img, cmap="gray")
    spur = "?" if row["spurious"] is None else int(row["spurious"])
    ax.set_title(f"y={row['label']} s={spur} p={row['score']:.2f}", fontsize=6)
    ax.axis("off")
