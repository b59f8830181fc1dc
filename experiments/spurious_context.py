"""Where does a dense model fire in negatives that carry the spurious feature?

For each checkpoint, over the test negatives with a spurious mask (``spurious_mask_path``):
the share of the image score's top-k pixels that lie on the spurious region and within
``--band`` pixels beside it, the mean image score (mean sigmoid of the top-k pixel logits) of
negatives with vs without the feature, and the mean pixel probability on the region. Used in
the README (issue 11) to tell "the tube is inside the boxes" from "the tube is context beside
the pathology"::

    python experiments/spurious_context.py runs/demo/runs/seg/budget-all/seed-*/checkpoints/*.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from spatialspec.data import read_mask
from spatialspec.evaluation.predict import datamodule_for, load_checkpoint


def probe(checkpoint: str, top_k: int = 16, band: int = 4) -> dict[str, float]:
    """The numbers above for one dense checkpoint."""
    method, config = load_checkpoint(checkpoint)
    data = datamodule_for(method, config)
    data.setup("test")
    manifest = Path(config["data"]["manifest"])
    frame = pd.read_csv(manifest).set_index("image_id")
    on, beside, prob, with_feature, without = [], [], [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            logits = method(batch["image"])[:, 0].numpy()  # (B, H, W)
            for k, image_id in enumerate(batch["image_id"]):
                rec = frame.loc[image_id]
                if rec["label"] != 0:
                    continue
                flat = logits[k].ravel()
                top = np.argsort(flat)[-top_k:]
                score = float((1.0 / (1.0 + np.exp(-flat[top]))).mean())
                if rec["spurious"] != 1 or not isinstance(rec.get("spurious_mask_path"), str):
                    without.append(score)
                    continue
                region = read_mask(manifest.parent / rec["spurious_mask_path"]) > 0
                near = (ndimage.distance_transform_edt(~region) <= band) & ~region
                on.append(region.ravel()[top].mean())
                beside.append(near.ravel()[top].mean())
                prob.append((1.0 / (1.0 + np.exp(-logits[k][region]))).mean())
                with_feature.append(score)
    return {
        "top_on_region": float(np.mean(on)),
        "top_beside_region": float(np.mean(beside)),
        "score_with": float(np.mean(with_feature)),
        "score_without": float(np.mean(without)),
        "p_on_region": float(np.mean(prob)),
        "n_with": len(with_feature),
    }


def main() -> None:
    """Print one line per checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--band", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for checkpoint in args.checkpoints:
        r = probe(checkpoint, args.top_k, args.band)
        print(
            f"{checkpoint}: top-{args.top_k} on region {r['top_on_region']:.2f}, beside "
            f"{r['top_beside_region']:.2f}; negatives' score with {r['score_with']:.3f} vs "
            f"without {r['score_without']:.3f}; P(region) {r['p_on_region']:.3f} "
            f"(n = {r['n_with']})",
            flush=True,
        )


if __name__ == "__main__":
    main()
