"""``detect``: box targets from masks, image scores, loss rows, box mAP and the boxes file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from spatialspec.evaluation.boxes import BOX_COLUMNS, box_map, boxes_path, write_boxes
from spatialspec.methods import get_method
from spatialspec.methods.detect import DetectMethod
from spatialspec.models import BackboneConfig
from spatialspec.models.detector import (
    DetectorConfig,
    DetectorNet,
    image_scores,
    masks_to_targets,
    pixel_boxes_to_xyxy,
)

#: A fast detector: FPN levels at strides 4, 8, 16 of the small encoder, a one-conv head.
SMALL_DETECTOR = {"fpn_channels": 32, "min_stride": 4, "head_convs": 1}


@pytest.fixture
def method(small_backbone: BackboneConfig) -> DetectMethod:
    torch.manual_seed(0)
    return get_method("detect")(backbone=small_backbone, **SMALL_DETECTOR).eval()


def batch_of(masks: torch.Tensor, labels: list[float], available: list[float]) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(masks.shape, generator=g) + 2.0 * masks,
        "mask": masks,
        "label": torch.tensor(labels, dtype=torch.float32),
        "mask_available": torch.tensor(available, dtype=torch.float32),
        "spurious": torch.zeros(len(labels)),
        "image_id": [f"img{i}" for i in range(len(labels))],
    }


def lesion_masks(n: int = 4, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size): a 10 x 6 box-shaped lesion on even images, none on odd ones."""
    masks = torch.zeros(n, 1, size, size)
    for i in range(0, n, 2):
        masks[i, 0, 4 + i : 14 + i, 8:14] = 1.0
    return masks


# ------------------------------------------------------------------------------ box targets


def test_masks_to_targets_one_box_per_8_connected_component() -> None:
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 2:5, 3:7] = 1  # rows 2-4, cols 3-6
    masks[0, 0, 5, 7] = 1  # touches the first block diagonally: the same component
    masks[0, 0, 10, 12] = 1  # a lone pixel
    targets = masks_to_targets(masks)
    expected = torch.tensor([[3.0, 2.0, 8.0, 6.0], [12.0, 10.0, 13.0, 11.0]])
    torch.testing.assert_close(targets[0]["boxes"], expected)
    assert targets[0]["labels"].tolist() == [0, 0]
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)


def test_pixel_boxes_to_xyxy_uses_pixel_edges() -> None:
    # inclusive (row0, col0, row1, col1): a single pixel has area 1
    xyxy = pixel_boxes_to_xyxy([(5, 7, 5, 7), (0, 0, 3, 1)])
    torch.testing.assert_close(xyxy, torch.tensor([[7.0, 5.0, 8.0, 6.0], [0.0, 0.0, 2.0, 4.0]]))
    assert pixel_boxes_to_xyxy([]).shape == (0, 4)


# ------------------------------------------------------------------------------ image scores


def _scored_boxes() -> tuple[torch.Tensor, torch.Tensor]:
    """Four locations: two near-identical boxes (IoU 0.82), one apart, one weak and apart."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 0, 50, 5]]])
    return torch.tensor([[0.9, 0.8, 0.5, 0.3]]), boxes


def test_image_score_max_and_noisy_or_by_hand() -> None:
    scores, boxes = _scored_boxes()
    assert image_scores(scores, boxes, "max").item() == pytest.approx(0.9)
    # NMS at 0.6 drops the 0.8 box (IoU 100 / 110 with the 0.9 one)
    noisy2 = image_scores(scores, boxes, "noisy_or", k=2, nms_thresh=0.6)
    assert noisy2.item() == pytest.approx(1 - 0.1 * 0.5)
    noisy3 = image_scores(scores, boxes, "noisy_or", k=3, nms_thresh=0.6)
    assert noisy3.item() == pytest.approx(1 - 0.1 * 0.5 * 0.7)
    # without suppression the near-duplicate counts
    loose = image_scores(scores, boxes, "noisy_or", k=2, nms_thresh=0.95)
    assert loose.item() == pytest.approx(1 - 0.1 * 0.2)
    assert image_scores(scores, boxes, "noisy_or", k=1).item() == pytest.approx(0.9)


def test_image_score_errors() -> None:
    scores, boxes = _scored_boxes()
    with pytest.raises(ValueError, match="unknown image score 'mean'; valid: max, noisy_or"):
        image_scores(scores, boxes, "mean")
    with pytest.raises(ValueError, match="noisy_or needs the boxes"):
        image_scores(scores, None, "noisy_or", k=2)


def test_location_scores_are_fcos_box_scores_and_max_is_the_top_detection(
    small_backbone: BackboneConfig,
) -> None:
    torch.manual_seed(0)
    net = DetectorNet(small_backbone, DetectorConfig(**SMALL_DETECTOR, score_thresh=0.0)).eval()
    with torch.no_grad():
        outputs = net(torch.randn(3, 1, 32, 32))
        scores = net.location_scores(outputs)  # (3, L)
        detections = net.detections(outputs)
    # L = 8x8 + 4x4 + 2x2 locations at strides 4, 8, 16
    assert scores.shape == (3, 84) and net.strides == [4, 8, 16]
    fcos = torch.sqrt(torch.sigmoid(outputs["cls_logits"]) * torch.sigmoid(outputs["bbox_ctrness"]))
    torch.testing.assert_close(scores, fcos[..., 0])
    top = torch.stack([d["scores"][0] for d in detections])
    torch.testing.assert_close(image_scores(scores, method="max"), top)


@pytest.mark.parametrize("how", ["max", "noisy_or"])
def test_image_score_has_input_gradients(small_backbone: BackboneConfig, how: str) -> None:
    torch.manual_seed(0)
    detect = get_method("detect")(backbone=small_backbone, image_score=how, **SMALL_DETECTOR)
    images = torch.randn(2, 1, 32, 32, requires_grad=True)
    detect.eval().score(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ loss rows


def test_rows_without_annotation_get_only_the_image_loss(method: DetectMethod) -> None:
    batch = batch_of(lesion_masks(), [1, 0, 1, 0], [0, 0, 0, 0])
    with torch.no_grad():
        losses = method.compute_loss(batch)
        scores = method.score(batch["image"])
    expected = F.binary_cross_entropy(scores, batch["label"])
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["image_loss"], expected)
    assert losses["box_loss"].item() == 0.0


def test_mixed_batch_sums_fcos_loss_of_annotated_rows_and_image_loss_of_the_rest(
    method: DetectMethod,
) -> None:
    available = [1.0, 1.0, 0.0, 0.0]  # a positive and a known-empty negative annotated
    batch = batch_of(lesion_masks(), [1, 0, 1, 0], available)
    known = torch.tensor(available) > 0.5
    with torch.no_grad():
        outputs = method(batch["image"])
        losses = method.loss(outputs, batch)
        targets = masks_to_targets(batch["mask"][known])
        fcos = method.net.losses(outputs, targets, known)
        image = F.binary_cross_entropy(method.scores(outputs)[~known], batch["label"][~known])
    assert [len(t["boxes"]) for t in targets] == [1, 0]
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[8.0, 4.0, 14.0, 14.0]]))
    assert all(v > 0 for v in fcos.values())  # focal, GIoU and centre-ness all active
    torch.testing.assert_close(losses["box_loss"], sum(fcos.values()))
    torch.testing.assert_close(losses["image_loss"], image)
    torch.testing.assert_close(losses["loss"], sum(fcos.values()) + image)


def test_loss_weights(small_backbone: BackboneConfig) -> None:
    torch.manual_seed(0)
    detect = get_method("detect")(
        backbone=small_backbone, box_weight=2.0, image_weight=0.5, **SMALL_DETECTOR
    ).eval()
    with torch.no_grad():
        losses = detect.compute_loss(batch_of(lesion_masks(), [1, 0, 1, 0], [1, 0, 1, 0]))
    expected = 2.0 * losses["box_loss"] + 0.5 * losses["image_loss"]
    torch.testing.assert_close(losses["loss"], expected)


@pytest.mark.parametrize("available", [[1, 1, 1, 1], [0, 0, 0, 0]])
def test_every_parameter_gets_a_gradient(method: DetectMethod, available: list[float]) -> None:
    # DDP runs without find_unused_parameters: no parameter may drop out of the graph
    method.train()
    method.compute_loss(batch_of(lesion_masks(), [1, 0, 1, 0], available))["loss"].backward()
    missing = [n for n, p in method.named_parameters() if p.grad is None]
    assert not missing


def test_bad_hyper_parameters_are_errors(small_backbone: BackboneConfig) -> None:
    make = get_method("detect")
    with pytest.raises(ValueError, match="unknown image_score 'mean'"):
        make(backbone=small_backbone, image_score="mean")
    with pytest.raises(ValueError, match="fpn_channels must be a positive multiple of 32"):
        make(backbone=small_backbone, fpn_channels=48)
    with pytest.raises(ValueError, match=r"min_stride 32 exceeds the encoder's total stride 16"):
        make(backbone=small_backbone, min_stride=32)


def test_box_branch_starts_at_the_anchor_box(small_backbone: BackboneConfig) -> None:
    # torchvision's zero bias leaves the ReLU'd box branch at the edge of its dead zone
    torch.manual_seed(0)
    net = DetectorNet(small_backbone, DetectorConfig(**SMALL_DETECTOR)).eval()
    with torch.no_grad():
        outputs = net(torch.randn(2, 1, 32, 32))
        boxes = net.decode_boxes(outputs)  # (2, L, 4)
    regression = outputs["bbox_regression"]  # in strides; the head's initial noise is small
    assert ((regression > 0.5) & (regression < 1.5)).all()
    assert regression.mean().item() == pytest.approx(1.0, abs=0.1)
    # about one stride to every side: a location at (16, 16) on the stride-4 level predicts
    # about (12, 12, 20, 20)
    index = 4 * 8 + 4  # row 4, column 4 of the 8 x 8 level
    torch.testing.assert_close(
        boxes[0, index], torch.tensor([12.0, 12.0, 20.0, 20.0]), atol=2.0, rtol=0
    )


def test_channels_last_detector_gives_the_same_outputs() -> None:
    cfg = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": (32, 16, 8)}
    x = torch.randn(2, 1, 32, 32)
    scores = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        net = DetectorNet(BackboneConfig(**cfg, channels_last=channels_last),
                          DetectorConfig(**SMALL_DETECTOR)).eval()  # fmt: skip
        with torch.no_grad():
            scores.append(net.location_scores(net(x)))
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ box mAP and file


def _pred(*boxes: tuple[float, ...], scores: tuple[float, ...]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.zeros(len(scores), dtype=torch.int64),
    }


def _truth(*boxes: tuple[float, ...]) -> dict[str, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64)}


def test_box_map_perfect_shifted_and_false_positives() -> None:
    truths = [_truth((10, 10, 20, 30)), _truth((0, 0, 8, 8))]
    perfect = [_pred((10, 10, 20, 30), scores=(0.9,)), _pred((0, 0, 8, 8), scores=(0.8,))]
    assert box_map(perfect, truths) == pytest.approx(1.0)
    # second box shifted by 4 px: IoU 16/112 < 0.5, a miss. Precision 1 up to recall 0.5, so
    # COCO's 101-point AP is 51/101.
    shifted = [perfect[0], _pred((4, 4, 12, 12), scores=(0.8,))]
    assert box_map(shifted, truths) == pytest.approx(51 / 101)
    # a 1-px shift keeps IoU 49/79 >= 0.5: still a match
    nudged = [perfect[0], _pred((1, 1, 9, 9), scores=(0.8,))]
    assert box_map(nudged, truths) == pytest.approx(1.0)
    # a negative image whose box outscores the true ones: precision 0, 1/2, 2/3 at recall 0,
    # 1/2, 1; COCO's envelope (best precision at any higher recall) is 2/3 throughout
    negative = [_pred((0, 0, 5, 5), scores=(0.95,)), _truth()]
    assert box_map([*perfect, negative[0]], [*truths, negative[1]]) == pytest.approx(2 / 3)
    assert box_map([_pred(scores=())], [_truth()]) is None  # no true box: undefined


def test_write_boxes(tmp_path: Path) -> None:
    path = boxes_path(tmp_path / "report.json")
    assert path.name == "report.boxes.csv"
    preds = [_pred((1, 2, 3, 4.5), (5, 6, 7, 8), scores=(0.9, 0.25)), _pred(scores=())]
    assert write_boxes(path, ["a", "b"], preds) == 2
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == BOX_COLUMNS
    assert rows[1:] == [["a", "1.00", "2.00", "3.00", "4.50", "0.90000"],
                        ["a", "5.00", "6.00", "7.00", "8.00", "0.25000"]]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["report.boxes.csv"]  # no temporary left


def test_evaluation_metrics_from_predict_outputs(method: DetectMethod, tmp_path: Path) -> None:
    masks = lesion_masks()
    batch = batch_of(masks, [1, 0, 1, 0], [1, 1, 1, 1])
    with torch.no_grad():
        out = method.predict_step(batch, 0)
    assert out["score"].shape == (4,) and len(out["detections"]) == 4
    # replace the untrained detections by perfect ones on the positives, one stray box on a
    # negative, to check the bookkeeping
    out["detections"] = [_pred((8, 4, 14, 14), scores=(0.9,)), _pred(scores=()),
                         _pred((8, 6, 14, 16), scores=(0.8,)),
                         _pred((0, 0, 4, 4), scores=(0.99,))]  # fmt: skip
    metrics = method.evaluation_metrics([out], tmp_path / "report.json")
    assert metrics["box_map_50"] == pytest.approx(1.0)
    assert metrics["box_map_50_all"] == pytest.approx(2 / 3)  # the stray box outscores both
    assert metrics["n_positives_with_boxes"] == 2 and metrics["n_true_boxes"] == 2
    assert metrics["n_predicted_boxes"] == 3
    assert Path(metrics["boxes_file"]) == (tmp_path / "report.boxes.csv").resolve()


def test_evaluate_checkpoint_reports_box_map_and_writes_boxes(
    tmp_path: Path, quick_fit_args: list[str]
) -> None:
    from spatialspec.evaluation.render import report_markdown
    from spatialspec.evaluation.runner import evaluate_checkpoint
    from spatialspec.training import fit

    small = [f"--model.{k}={v}" for k, v in SMALL_DETECTOR.items()]
    info = fit(
        [
            "--method",
            "detect",
            "--out_dir",
            str(tmp_path / "run"),
            *quick_fit_args,
            "--trainer.limit_train_batches",
            "1",
            *small,
        ]
    )
    out = tmp_path / "report.json"
    report = evaluate_checkpoint(
        info["last_checkpoint"], out, n_resamples=20, progress=False, accelerator="cpu"
    )
    metrics = report["method_metrics"]
    assert metrics["n_positives_with_boxes"] == 20  # the tiny test split's positives
    assert metrics["box_map_50"] is None or 0.0 <= metrics["box_map_50"] <= 1.0
    with (tmp_path / "report.boxes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["n_predicted_boxes"]
    assert {r["image_id"] for r in rows} <= set(report_ids(tmp_path / "report.predictions.csv"))
    assert "| box_map_50 |" in report_markdown(report)


def report_ids(path: Path) -> list[str]:
    with path.open() as fh:
        return [r["image_id"] for r in csv.DictReader(fh) if r["split"] == "test"]


def test_audit_hooks_see_the_detector(method: DetectMethod) -> None:
    from spatialspec.audit.attributions import ScoreModel
    from spatialspec.audit.embeddings import embed
    from spatialspec.audit.randomization import randomization_layers
    from spatialspec.audit.saliency_criteria import pixel_probabilities

    images = torch.randn(3, 1, 32, 32)
    embeddings, scores = embed(method, images)
    assert embeddings.shape == (3, 48)  # pooled deepest encoder map of the small encoder
    torch.testing.assert_close(torch.from_numpy(scores).float(), method.score(images))
    assert pixel_probabilities(method, images) is None  # boxes, no pixel map
    layers = [name for name, _ in randomization_layers(method, images)]
    assert layers[0] == "pixel_head" and layers[1].startswith("encoder stage")
    x = images.clone().requires_grad_(True)
    ScoreModel(method)(x).sum().backward()  # the score's log-odds, for captum
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
