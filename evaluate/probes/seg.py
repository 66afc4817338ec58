"""Linear-probe semantic segmentation, the protocol of RADIO's mmseg config (notes/radio-code.md).

A frozen backbone; on its patch grid (one layer, or several concatenated) a BatchNorm and a
1x1 conv to the classes (mmseg's ``BNHead``). Training: random scale of the short side in
``[0.5, 2] * crop``, a random ``crop x crop`` window, flip; logits upsampled bilinearly to the
crop, cross-entropy with unlabeled pixels ignored; AdamW (lr 1e-3, weight decay 0), linear
warm-up then poly decay, a fixed number of iterations. Scoring: each validation image whole,
its short side resized to ``crop`` (sides multiples of the patch), logits upsampled to the
label's own resolution (``mask_resolution="full"``, the default) or scored at the input size
(``"input"``, labels resized by nearest neighbour), then mIoU, pixel accuracy, per-class IoU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import DenseBackbone
from .common import (
    check_crop,
    grids_to_nchw,
    random_crop,
    resize_image,
    resize_nearest,
    to_tensor,
    warmup_poly,
    whole_size,
)
from .datasets import SegSplit, read_rgb
from .metrics import IGNORE, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

MASK_RESOLUTIONS = ("full", "input")


@dataclass(frozen=True)
class SegSettings:
    crop: int = 512  # unit pixels (a multiple of the patch)
    iterations: int = 2000
    warmup: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    layers: str = "last"  # "last", "4" or block indices; resolved per backbone
    mask_resolution: str = "full"
    scale_range: tuple[float, float] = (0.5, 2.0)
    seed: int = 0


class BNHead(nn.Module):
    """``[B, C, h, w]`` → BatchNorm → 1x1 conv → logits ``[B, K, h, w]``."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


@dataclass
class SegScore:
    """One table row: ``per_class_iou`` None where a class is in neither labels nor prediction."""

    model: str
    kind: str  # "model", "random-init", "teacher", "chance"
    layers: list[int]
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    confusion: list[list[int]] = field(default_factory=list)


def score_from_confusion(name: str, kind: str, layers: list[int], c: torch.Tensor, classes) -> SegScore:
    iou = iou_per_class(c)
    per_class = {n: (None if torch.isnan(v) else float(v)) for n, v in zip(classes, iou, strict=True)}
    return SegScore(name, kind, layers, mean_iou(c), pixel_accuracy(c), per_class, c.tolist())


class _TrainImages:
    """Training images and labels, kept in memory for small sets (the sample data)."""

    def __init__(self, split: SegSplit, cache: int = 512):
        self.split, self.cache = split, len(split.images) <= cache
        self._mem: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self._mem:
            return self._mem[i]
        item = to_tensor(read_rgb(self.split.images[i])), torch.from_numpy(self.split.label(i))
        if item[0].shape[1:] != item[1].shape:
            raise ValueError(
                f"{self.split.images[i]}: image {tuple(item[0].shape[1:])} and label {tuple(item[1].shape)} differ"
            )
        if self.cache:
            self._mem[i] = item
        return item


def _batch(data: _TrainImages, n: int, s: SegSettings, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = [], []
    for i in rng.integers(0, len(data.split.images), size=n):
        img, lab = data[int(i)]
        short = s.crop * rng.uniform(*s.scale_range)
        h, w = img.shape[1:]
        size = (max(1, round(h * short / min(h, w))), max(1, round(w * short / min(h, w))))
        img, lab = random_crop(resize_image(img, size), resize_nearest(lab, size), s.crop, IGNORE, rng)
        imgs.append(img)
        labels.append(lab)
    return torch.stack(imgs), torch.stack(labels)


def train_head(backbone: DenseBackbone, train: SegSplit, s: SegSettings, blocks: list[int]) -> BNHead:
    """The trained head on ``backbone``'s ``blocks`` grids (the backbone stays frozen)."""
    check_crop(s.crop, backbone.unit)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    head = BNHead(sum(backbone.dims(blocks)), len(train.classes)).to(backbone.device)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_poly(k, s.warmup, s.iterations))
    data = _TrainImages(train)
    head.train()
    for _ in range(s.iterations):
        images, labels = _batch(data, s.batch_size, s, rng)
        feats = grids_to_nchw(backbone.layers(images, blocks))
        logits = F.interpolate(head(feats), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels.to(backbone.device), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss) and loss.requires_grad:
            loss.backward()
            opt.step()
        sched.step()
    return head.eval()


@torch.no_grad()
def predict(backbone: DenseBackbone, head: BNHead, img: torch.Tensor, crop: int, blocks: list[int]) -> torch.Tensor:
    """Logits ``[K, H', W']`` of one image ``[3, H, W]`` at its whole-inference input size."""
    size = whole_size(img.shape[1], img.shape[2], crop, backbone.unit)
    feats = grids_to_nchw(backbone.layers(resize_image(img, size)[None], blocks))
    return F.interpolate(head(feats), size=size, mode="bilinear", align_corners=False)[0].float().cpu()


def evaluate_head(backbone, head, val: SegSplit, s: SegSettings, blocks: list[int]) -> torch.Tensor:
    """The confusion matrix over ``val`` at ``s.mask_resolution``."""
    k = len(val.classes)
    total = torch.zeros(k, k, dtype=torch.int64)
    for i, path in enumerate(val.images):
        img, label = to_tensor(read_rgb(path)), torch.from_numpy(val.label(i))
        logits = predict(backbone, head, img, s.crop, blocks)
        if s.mask_resolution == "full":
            pred = F.interpolate(logits[None], size=label.shape, mode="bilinear", align_corners=False)[0].argmax(0)
        else:
            pred, label = logits.argmax(0), resize_nearest(label, (int(logits.shape[1]), int(logits.shape[2])))
        total += confusion_matrix(pred, label, k)
    return total


def chance_confusion(train: SegSplit, val: SegSplit, s: SegSettings) -> torch.Tensor:
    """A chance-level head: the training set's most frequent class, predicted everywhere."""
    k = len(train.classes)
    counts = torch.zeros(k, dtype=torch.int64)
    for i in range(len(train.images)):
        lab = torch.from_numpy(train.label(i)).reshape(-1)
        counts += torch.bincount(lab[lab != IGNORE], minlength=k)[:k]
    major = int(counts.argmax())
    total = torch.zeros(k, k, dtype=torch.int64)
    for i in range(len(val.images)):
        label = torch.from_numpy(val.label(i))
        total += confusion_matrix(torch.full_like(label, major), label, k)
    return total


def probe(backbone: DenseBackbone, kind: str, train: SegSplit, val: SegSplit, s: SegSettings) -> SegScore:
    """Train and score the linear head on one backbone."""
    from .backbone import parse_layers

    blocks = parse_layers(s.layers, backbone.depth)
    head = train_head(backbone, train, s, blocks)
    return score_from_confusion(backbone.name, kind, blocks, evaluate_head(backbone, head, val, s, blocks), val.classes)


def settings_dict(s: SegSettings) -> dict:
    return asdict(s)
