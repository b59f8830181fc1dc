"""Metadata and a templated radiology report for each synthetic image.

The synthetic benchmark (:mod:`spatialspec.data.synthetic`) gives every image three metadata
columns and a short free-text ``report``, so the multimodal audits (slices over image + text +
metadata, the masking audit's metadata-only reference) have something real to find. Both are
drawn from their own random stream, so the images of a draw never change with them.

Noise model (all probabilities are constants of this module, listed in :data:`REPORT_NOISE`):

- **Tube**: an image with the tube mentions it in 85 % of reports ("Right chest tube in
  place.", ...; the side is the tube's lung); 4 % of images without one carry a false mention
  (a tube removed since, a line read as a tube).
- **Pneumothorax**: a positive's report names it in 80 % of cases (with its side and a size
  word), says nothing in the rest; 60 % of negatives say "No pneumothorax."; 3 % of negatives
  carry a false "Possible small ... pneumothorax.".
- **Filler**: one to three incidental sentences from a fixed list, independent of everything.
- **Metadata**: ``view`` is ``AP`` (portable, bedside films: the patients who have tubes) with
  probability 0.75 when the tube is present, 0.30 otherwise, else ``PA``; ``age`` ~ N(58, 16)
  clipped to [18, 95]; ``sex`` M/F with equal probability. Only ``view`` carries information
  (about the tube); ``age`` and ``sex`` are distractors.

Sides follow the radiological convention: the lung on the image's left is the patient's right.
"""

from __future__ import annotations

import numpy as np

__all__ = ["REPORT_NOISE", "draw_metadata", "draw_report"]

#: Probabilities of the report's noise model (see the module docstring).
REPORT_NOISE = {
    "tube_mentioned_if_present": 0.85,
    "tube_mentioned_if_absent": 0.04,
    "pneumothorax_mentioned_if_present": 0.80,
    "pneumothorax_negated_if_absent": 0.60,
    "pneumothorax_false_mention": 0.03,
    "view_ap_if_tube": 0.75,
    "view_ap_if_no_tube": 0.30,
}

_TUBE = (
    "{Side} chest tube in place.",
    "{Side}-sided pigtail catheter projects over the lung base.",
    "Interval placement of a {side} thoracostomy tube.",
    "Chest drain projects over the {side} hemithorax.",
    "{Side} pleural drain, tip in the upper zone.",
)
_PNEUMOTHORAX = (
    "{Size} {side} apical pneumothorax.",
    "{Size} {side}-sided pneumothorax with visible pleural line.",
    "There is a {size} {side} pneumothorax.",
    "{Side} lateral pneumothorax, {size}.",
)
_NO_PNEUMOTHORAX = ("No pneumothorax.", "No evidence of pneumothorax.", "No pleural air.")
_FALSE_PNEUMOTHORAX = ("Possible small {side} apical pneumothorax.",)
_SIZES = ("small", "moderate", "tiny", "large")
_FILLER = (
    "Heart size is normal.",
    "No focal consolidation.",
    "No pleural effusion.",
    "Degenerative changes of the thoracic spine.",
    "Mediastinal contours are unremarkable.",
    "Mild bibasal atelectasis.",
    "Osseous structures are intact.",
    "Comparison is made with the prior study.",
)


def _side(lung: int) -> str:
    """Lung index (0: the image's left) -> the patient's side."""
    return "right" if lung == 0 else "left"


def _fill(rng: np.random.Generator, templates: tuple[str, ...], side: str) -> str:
    size = _SIZES[int(rng.integers(len(_SIZES)))]
    text = templates[int(rng.integers(len(templates)))]
    return text.format(side=side, Side=side.capitalize(), size=size, Size=size.capitalize())


def draw_metadata(rng: np.random.Generator, spurious: int) -> dict[str, object]:
    """``view``, ``age`` and ``sex`` of one image (only ``view`` depends on the tube)."""
    p_ap = REPORT_NOISE["view_ap_if_tube" if spurious else "view_ap_if_no_tube"]
    return {
        "view": "AP" if rng.uniform() < p_ap else "PA",
        "age": int(np.clip(round(rng.normal(58.0, 16.0)), 18, 95)),
        "sex": "M" if rng.uniform() < 0.5 else "F",
    }


def draw_report(
    rng: np.random.Generator, label: int, spurious: int, side: int, tube_side: int
) -> str:
    """A short findings text with the noise of :data:`REPORT_NOISE`.

    Args:
        rng: The image's report stream.
        label: 1 if the image has the pathology.
        spurious: 1 if it has the tube.
        side: Lung index of the pathology (or where one would be).
        tube_side: Lung index of the tube (any lung where there is none).
    """
    noise = REPORT_NOISE
    sentences = []
    tube_p = noise["tube_mentioned_if_present" if spurious else "tube_mentioned_if_absent"]
    if rng.uniform() < tube_p:
        sentences.append(_fill(rng, _TUBE, _side(tube_side)))
    if label:
        if rng.uniform() < noise["pneumothorax_mentioned_if_present"]:
            sentences.append(_fill(rng, _PNEUMOTHORAX, _side(side)))
    elif rng.uniform() < noise["pneumothorax_false_mention"]:
        sentences.append(_fill(rng, _FALSE_PNEUMOTHORAX, _side(side)))
    elif rng.uniform() < noise["pneumothorax_negated_if_absent"]:
        sentences.append(_NO_PNEUMOTHORAX[int(rng.integers(len(_NO_PNEUMOTHORAX)))])
    n_filler = int(rng.integers(1, 4))
    sentences += [str(s) for s in rng.choice(_FILLER, size=n_filler, replace=False)]
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)
