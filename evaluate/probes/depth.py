"""A Probe3D-style monocular depth probe on a frozen backbone.

Features of 4 blocks (depth/4, /2, 3/4 and the last: :func:`~.backbone.four_layers`) feed a
head: ``linear`` (the 4 grids concatenated, BatchNorm, 1x1 conv) or ``dpt`` (a small DPT-like
decoder: each grid projected and resampled to 4x, 2x, 1x and 1/2x of the patch grid, fused
coarse to fine with residual conv units). Output: ``bins`` logits whose softmax weights
uniform bin centres in ``(min_depth, max_depth]`` (Probe3D's binned prediction), trained with
the scale-invariant log loss (SigLoss, λ = 0.85), or ``l1``: one channel, depth =
``max_depth · sigmoid``, trained with L1 (plain regression). Training takes random ``crop x
crop`` windows and flips; scoring runs each validation image whole (short side = ``crop``),
upsamples to the depth map's own resolution and scores RMSE, AbsRel and δ<1.25 over pixels with
known depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone import DenseBackbone, four_layers
from .common import check_crop, random_crop, resize_image, to_tensor, warmup_poly, whole_size
from .datasets import NYU_MAX_DEPTH, DepthSplit
from .metrics import depth_metrics

HEADS = ("linear", "dpt")
LOSSES = ("bins", "l1")


@dataclass(frozen=True)
class DepthSettings:
    crop: int = 448
    iterations: int = 2000
    warmup: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    head: str = "dpt"
    loss: str = "bins"
    bins: int = 256
    min_depth: float = 1e-3
    max_depth: float = NYU_MAX_DEPTH
    seed: int = 0


class LinearDepthHead(nn.Module):
    """``[B, C, h, w]`` (4 grids concatenated) → BatchNorm → 1x1 conv → ``[B, out, h, w]``."""

    def __init__(self, dims: list[int], out: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(sum(dims))
        self.conv = nn.Conv2d(sum(dims), out, 1)

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.bn(torch.cat(grids, 1)))


class _ResidualConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DPTHead(nn.Module):
    """A small DPT-like decoder: grids ``[B, C_i, h, w]`` (4 of them) → ``[B, out, 4h, 4w]``."""

    def __init__(self, dims: list[int], out: int, hidden: int = 64):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in dims)
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(hidden, hidden, 4, stride=4),
                nn.ConvTranspose2d(hidden, hidden, 2, stride=2),
                nn.Identity(),
                nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            ]
        )
        self.fuse = nn.ModuleList(_ResidualConv(hidden) for _ in dims)
        self.out = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, out, 1))

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        levels = [r(p(g)) for g, p, r in zip(grids, self.project, self.resample, strict=True)]
        x = self.fuse[3](levels[3])
        for i in (2, 1, 0):  # coarse to fine: upsample onto the next level, add, refine
            x = self.fuse[i](levels[i] + F.interpolate(x, size=levels[i].shape[-2:], mode="bilinear"))
        return self.out(x)


def make_head(s: DepthSettings, dims: list[int]) -> nn.Module:
    out = s.bins if s.loss == "bins" else 1
    return LinearDepthHead(dims, out) if s.head == "linear" else DPTHead(dims, out)


def to_depth(logits: torch.Tensor, s: DepthSettings) -> torch.Tensor:
    """Head output ``[B, out, H, W]`` → depth ``[B, H, W]`` in metres."""
    if s.loss == "bins":
        centres = torch.linspace(s.min_depth, s.max_depth, s.bins + 1, device=logits.device)
        centres = (centres[1:] + centres[:-1]) / 2
        return torch.einsum("bkhw,k->bhw", logits.softmax(1), centres)
    return s.max_depth * torch.sigmoid(logits[:, 0])


def upsampled_depth(logits: torch.Tensor, s: DepthSettings, size) -> torch.Tensor:
    """Depth ``[B, *size]``: decoded at the head's resolution, then upsampled bilinearly (one
    channel, not ``bins`` logits, is resized: the same values at a fraction of the cost)."""
    d = to_depth(logits, s)[:, None]
    return F.interpolate(d, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def sig_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss ``sqrt(mean(g^2) - λ mean(g)^2)``, ``g = log p - log t`` on valid pixels."""
    g = pred[valid].clamp_min(1e-3).log() - target[valid].log()
    return (g.pow(2).mean() - lam * g.mean().pow(2)).clamp_min(1e-8).sqrt()


@dataclass
class DepthScore:
    model: str
    kind: str
    layers: list[int]
    rmse: float
    abs_rel: float
    delta1: float


class _Samples:
    def __init__(self, split: DepthSplit, cache: int = 512):
        self.split, self.cache = split, len(split.files) <= cache
        self.mem: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self.mem:
            img, d = self.split.sample(i)
            item = (to_tensor(img), torch.from_numpy(d))
            if not self.cache:
                return item
            self.mem[i] = item
        return self.mem[i]


def _head_input(backbone: DenseBackbone, images: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:
    return [g.permute(0, 3, 1, 2).contiguous() for g in backbone.layers(images, blocks)]


def train_head(backbone: DenseBackbone, train: DepthSplit, s: DepthSettings) -> tuple[nn.Module, list[int]]:
    check_crop(s.crop, backbone.unit)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    blocks = four_layers(backbone.depth)
    head = make_head(s, backbone.dims(blocks)).to(backbone.device)
    opt = torch.optim.AdamW(head.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_poly(k, s.warmup, s.iterations))
    data = _Samples(train)
    head.train()
    for _ in range(s.iterations):
        pairs = [data[int(i)] for i in rng.integers(0, len(train.files), size=s.batch_size)]
        crops = [random_crop(img, d, s.crop, 0.0, rng) for img, d in pairs]
        images = torch.stack([c[0] for c in crops])
        target = torch.stack([c[1] for c in crops]).to(backbone.device)
        pred, valid = upsampled_depth(head(_head_input(backbone, images, blocks)), s, target.shape[-2:]), target > 0
        if not valid.any():
            sched.step()
            continue
        loss = sig_loss(pred, target, valid) if s.loss == "bins" else (pred - target)[valid].abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval(), blocks


@torch.no_grad()
def evaluate_head(backbone, head, blocks, val: DepthSplit, s: DepthSettings) -> dict[str, float]:
    preds, targets = [], []
    for i in range(len(val.files)):
        img, d = val.sample(i)
        x = to_tensor(img)
        size = whole_size(x.shape[1], x.shape[2], s.crop, backbone.unit)
        out = head(_head_input(backbone, resize_image(x, size)[None], blocks))
        preds.append(upsampled_depth(out, s, d.shape)[0].float().cpu().reshape(-1))
        targets.append(torch.from_numpy(d).reshape(-1))
    return depth_metrics(torch.cat(preds), torch.cat(targets))


def probe(backbone: DenseBackbone, kind: str, train: DepthSplit, val: DepthSplit, s: DepthSettings) -> DepthScore:
    head, blocks = train_head(backbone, train, s)
    return DepthScore(backbone.name, kind, blocks, **evaluate_head(backbone, head, blocks, val, s))


def constant_baseline(train: DepthSplit, val: DepthSplit) -> DepthScore:
    """Chance level: the training set's mean known depth, predicted everywhere."""
    known = [d[d > 0] for d in (train.sample(i)[1] for i in range(len(train.files)))]
    mean = float(np.concatenate(known).mean())
    targets = torch.cat([torch.from_numpy(val.sample(i)[1]).reshape(-1) for i in range(len(val.files))])
    return DepthScore("constant (train mean)", "chance", [], **depth_metrics(torch.full_like(targets, mean), targets))
