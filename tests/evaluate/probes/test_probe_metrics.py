"""The probes' metrics on hand-made cases: a known confusion matrix, a known depth map, known
end-point errors."""

from __future__ import annotations

import math

import pytest
import torch

from radio.evaluate.probes.metrics import (
    IGNORE,
    confusion_matrix,
    depth_metrics,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    recall_at_thresholds,
)


def test_confusion_matrix_counts_labeled_pixels_only():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    c = confusion_matrix(pred, target, 3)
    assert c.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # the ignored pixel is not counted


def test_iou_miou_and_accuracy_of_a_known_matrix():
    c = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    # class 0: 3 / (3 + 2 + 1) = 1/2; class 1: 4 / (4 + 1 + 2) = 4/7; class 2 absent: NaN
    iou = iou_per_class(c)
    assert iou[:2].tolist() == pytest.approx([0.5, 4 / 7]) and math.isnan(iou[2])
    assert mean_iou(c) == pytest.approx((0.5 + 4 / 7) / 2)
    assert pixel_accuracy(c) == pytest.approx(7 / 10)
    # a class only predicted (never true) counts, with IoU 0
    c2 = torch.tensor([[2, 1], [0, 0]])
    assert iou_per_class(c2).tolist() == pytest.approx([2 / 3, 0.0]) and mean_iou(c2) == pytest.approx(1 / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"prediction \(2, 2\) and labels \(2, 3\) differ in shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 2)


def test_depth_metrics_of_a_known_map():
    g = torch.tensor([[1.0, 2.0], [4.0, float("nan")]])
    p = torch.tensor([[1.0, 3.0], [4.0, 9.0]])  # errors 0, 1, 0 on the 3 valid pixels
    m = depth_metrics(p, g)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert m["delta1"] == pytest.approx(2 / 3)  # 3/2 > 1.25
    valid = torch.tensor([[True, False], [True, True]])
    assert depth_metrics(p, g, valid) == {"rmse": 0.0, "abs_rel": 0.0, "delta1": 1.0}
    with pytest.raises(ValueError, match="no valid depth pixels"):
        depth_metrics(p, torch.full((2, 2), float("inf")))


def test_recall_at_pixel_thresholds():
    errors = torch.tensor([0.0, 0.9, 1.0, 2.5, 10.0])
    assert recall_at_thresholds(errors, [1, 3, 20]) == {1.0: 0.4, 3.0: 0.8, 20.0: 1.0}
