"""Weighted k-nearest-neighbour classification of summary features (notes/radio-code.md §2.10).

RADIO's protocol (the DINO one): L2-normalize every summary; for a query take the k training
samples of highest cosine similarity; each votes for its class with weight ``exp(sim / τ)``;
the class scores are the summed weights. k = 20, τ = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K = 20
TEMPERATURE = 0.07


def knn_scores(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = K,
    temperature: float = TEMPERATURE,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``[Q, num_classes]`` of ``queries [Q, D]`` against ``train [N, D]`` with
    labels ``train_labels [N]`` (k is capped at N). Features need not be normalized."""
    if train.shape[0] == 0:
        raise ValueError("kNN needs at least one training sample")
    if temperature <= 0 or k <= 0:
        raise ValueError(f"kNN needs k > 0 and temperature > 0, got k={k}, temperature={temperature}")
    train = F.normalize(train.double(), dim=-1)
    labels = train_labels.long()
    k = min(k, train.shape[0])
    out = []
    for q in F.normalize(queries.double(), dim=-1).split(chunk):
        sim, idx = (q @ train.T).topk(k, dim=1)
        scores = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
        out.append(scores.scatter_add_(1, labels[idx], (sim / temperature).exp()))
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Share of rows whose true label is among the ``k`` highest scores, per ``k`` (capped at
    the number of classes)."""
    labels = labels.long()
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[k] = float((top == labels[:, None]).any(dim=1).double().mean())
    return result
