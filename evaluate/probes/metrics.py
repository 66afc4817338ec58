"""The probes' metrics, pure functions of predictions and ground truth.

- Segmentation (mmseg's definitions): a confusion matrix over the labeled pixels, per-class IoU
  ``TP / (TP + FP + FN)``, mIoU the mean over classes present in the ground truth or the
  prediction (a class absent from both is NaN and left out, as mmseg's ``nanmean``), pixel
  accuracy ``trace / total``.
- Depth (Probe3D / Eigen et al.): over valid pixels, RMSE ``sqrt(mean((p - g)^2))``, AbsRel
  ``mean(|p - g| / g)``, and δ<1.25 the share with ``max(p/g, g/p) < 1.25``.
- Correspondence: recall at a pixel threshold, the share of matches whose end-point error is
  below it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = 255
"""The label value that marks pixels without ground truth (mmseg's ``ignore_index``)."""


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore: int = IGNORE) -> torch.Tensor:
    """``[K, K]`` int64 counts, row = true class, column = predicted class, of the pixels whose
    ``target`` (any shape, same as ``pred``) is neither ``ignore`` nor out of ``0..K-1``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape")
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t != ignore) & (t >= 0) & (t < num_classes)
    idx = t[keep] * num_classes + p[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """``[K]`` float64 IoU per class; NaN where the class is in neither ground truth nor prediction."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """The mean of :func:`iou_per_class` over the classes that are not NaN (NaN if none is)."""
    iou = iou_per_class(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Correct labeled pixels over all labeled pixels (NaN if there are none)."""
    total = float(confusion.sum())
    return float(confusion.diagonal().sum()) / total if total else float("nan")


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """``rmse``, ``abs_rel`` and ``delta1`` (δ<1.25) over pixels where ``valid`` (default: the
    target is finite and positive). ``pred`` is clamped to a small positive floor for the ratios."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and depth {tuple(target.shape)} differ in shape")
    ok = torch.isfinite(target) & (target > 0)
    if valid is not None:
        ok &= valid.bool()
    if not ok.any():
        raise ValueError("no valid depth pixels to score")
    p, g = pred[ok].double().clamp_min(1e-6), target[ok].double()
    ratio = torch.maximum(p / g, g / p)
    return {
        "rmse": float(((p - g) ** 2).mean().sqrt()),
        "abs_rel": float(((p - g).abs() / g).mean()),
        "delta1": float((ratio < 1.25).double().mean()),
    }


def recall_at_thresholds(errors: torch.Tensor, thresholds: Sequence[float]) -> dict[float, float]:
    """Share of matches with end-point error ``< t`` pixels, per threshold ``t`` (``errors [N]``)."""
    if errors.numel() == 0:
        raise ValueError("no ground-truth matches to score")
    e = errors.double().reshape(-1)
    return {float(t): float((e < t).double().mean()) for t in thresholds}
