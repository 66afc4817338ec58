"""stages[].partition_weights: how a multi-resolution stage's partitions add up in the loss (issue 23 §2)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config.schema import PartitionConfig, StageConfig
from radio.distill.adaptors import AdaptorOutput
from radio.distill.loss import DistillLoss, KeyTarget
from radio.store.normalizers import Normalizer

C = 6


def _stage(weights, batches=(2, 6)) -> StageConfig:
    parts = [PartitionConfig(resolution=64 * (i + 1), batch_size=b, targets=("t@32",)) for i, b in enumerate(batches)]
    return StageConfig(steps=1, partitions=tuple(parts), partition_weights=weights)


def _grads(weights) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The gradient of a two-partition step's total on a shared layer, and each partition's own."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(C, C)
    batches = (2, 6)
    inputs = [torch.randn(b, 3, 3, C) for b in batches]
    targets = [torch.randn(b, 3, 3, C) * 2 + 1 for b in batches]
    parts = [(64 * (p + 1), [KeyTarget("t@32", "t", (3, 3), True, True)]) for p in range(2)]

    def step(loss_fn, which=(0, 1)) -> torch.Tensor:
        outs, data = [], []
        for p in which:
            f = layer(inputs[p])
            outs.append(SimpleNamespace(adaptors={"t": AdaptorOutput(f.mean(dim=(1, 2)), f)}))
            data.append(
                {"image": inputs[p], "targets": {"t@32": {"features": targets[p], "summary": targets[p][:, 0, 0]}}}
            )
        layer.zero_grad()
        loss_fn(outs, data)["total"].backward()
        return layer.weight.grad.clone()

    norms = {"t": Normalizer("none", np.zeros(C))}
    values = _stage(weights, batches).partition_weight_values
    total = step(DistillLoss(parts, norms, partition_weights=values))
    alone = [step(DistillLoss([parts[p]], norms), (p,)) for p in range(2)]
    return total, alone


@pytest.mark.parametrize(
    "weights, mix",
    [("equal", (1.0, 1.0)), ("batch", (2 * 2 / 8, 2 * 6 / 8)), ((0.25, 3.0), (0.25, 3.0))],
    ids=["equal", "batch", "explicit"],
)
def test_the_gradient_is_the_hand_computed_mix_of_the_partitions_gradients(weights, mix):
    total, (g0, g1) = _grads(weights)
    assert torch.allclose(total, mix[0] * g0 + mix[1] * g1, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(g0, g1, rtol=0.1)  # the mixes differ from one another


def test_batch_weights_give_equal_batches_the_total_of_equal():
    assert _stage("batch", (4, 4)).partition_weight_values == (1.0, 1.0)
    assert _stage("batch", (4, 12)).partition_weight_values == (0.5, 1.5)
    assert _stage("equal", (4, 12)).partition_weight_values == (1.0, 1.0)


def test_default_is_equal(repo):
    stage = yaml.safe_load((repo / "pipelines.yaml").read_text())["pipelines"]["tiny"]["stages"][2]
    assert StageConfig(**stage).partition_weights == "equal"


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], "pipelines.tiny.stages.2: partition_weights has 1 numbers for 2 partitions"),
        ([1.0, -0.5], "pipelines.tiny.stages.2: partition_weights [1.0, -0.5]: every weight must be >= 0"),
        (
            "gpus",
            "pipelines.tiny.stages.2.partition_weights: partition_weights 'gpus': use equal, batch or one number "
            "per partition",
        ),
    ],
    ids=["length", "negative", "unknown"],
)
def test_bad_explicit_weights_are_one_line_exit_2(tmp_path, repo, weights, message):
    raw = yaml.safe_load((repo / "pipelines.yaml").read_text())
    raw = {"default": "tiny", "pipelines": {"tiny": copy.deepcopy(raw["pipelines"]["tiny"])}}
    raw["pipelines"]["tiny"]["stages"][2]["partition_weights"] = weights
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["config", "validate", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path}: {message}"


def test_the_trainer_logs_the_weighted_total(tiny_store, tmp_path):
    from radio.distill.run import read_metrics
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    config, path = tiny_store
    fit_store(FeatureStore(path))  # idempotent: the normalizers the other distill tests use
    two = config.stages[2].model_copy(update={"partition_weights": (0.5, 2.0)})  # 192 px, 256 px
    config = config.model_copy(update={"out": str(tmp_path / "run"), "stages": (two,)})
    train_stage(config, 1, steps=1)
    (record,) = read_metrics(tmp_path / "run" / "stage1" / "metrics.jsonl")
    parts = [sum(v for k, v in record.items() if k.startswith(f"{r}:")) for r in (192, 256)]
    assert parts[0] > 0 and parts[1] > 0
    assert record["total"] == pytest.approx(0.5 * parts[0] + 2.0 * parts[1], rel=1e-5)
