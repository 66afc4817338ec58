"""The shift-equivariant loss on a cache (issue 26): the student's window and the teacher's cached
window cover the same image pixels at every drawn offset (checked with features that encode
position), offsets are a pure function of (seed, stage, partition, step, row), clamps are
counted, and `tiny` with a margin and shift on featurizes and trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radio.config import load_pipeline
from radio.config.schema import ShiftConfig
from radio.distill.data import StepBatches
from radio.distill.loss import KeyTarget, align_features
from radio.distill.shift import ShiftError, apply_windows, clamp_record, draw_offsets, shift_plan
from radio.featurize import mosaic
from radio.shards.crops import CropBox, crop_resize, margin_view

W, H = 320, 280
BOX = CropBox(70, 50, 168, 140)  # non-square: squashed to the square, as RandomResizedCrop


def _position_image() -> np.ndarray:
    """``[H, W, 3] uint8``: red = x, green = y (a linear ramp each, so resampling keeps it)."""
    x = np.broadcast_to(np.arange(W)[None, :] * 255 / (W - 1), (H, W))
    y = np.broadcast_to(np.arange(H)[:, None] * 255 / (H - 1), (H, W))
    return np.stack([x, y, np.full((H, W), 128.0)], -1).round().astype(np.uint8)


def _positions(view: torch.Tensor, patch: int) -> torch.Tensor:
    """The toy teacher (and student): ``[3, S, S]`` → ``[S/patch, S/patch, 2]`` each token's mean
    image (x, y) in pixels: features that say which pixels a token saw."""
    pooled = F.avg_pool2d(view[None, :2].float(), patch)[0].permute(1, 2, 0)
    return pooled / 255 * torch.tensor([W - 1, H - 1])


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)


def _key(key: str, g: int, margin: int = 1, exact: bool = False) -> KeyTarget:
    return KeyTarget(key, key, (g, g), exact, False, margin=margin)


def _every_offset(limit: int) -> np.ndarray:
    r = np.arange(-limit, limit + 1)
    return np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)


@pytest.mark.parametrize("flip", [False, True])
def test_student_and_teacher_windows_cover_the_same_pixels_on_an_exact_grid(flip):
    px = _position_image()
    # Teacher: patch 14 at 112 px (8x8, as clip_tiny), margin 1 → a cached 10x10 grid (featurize's view).
    teacher = _positions(_chw(margin_view(px, BOX, 112, 14)), 14)
    assert teacher.shape == (10, 10, 2)
    plan = shift_plan(128, [_key("t", 8)], True, 0.5)  # the student's 8x8 grid at 128 px
    assert plan is not None and plan.limit == 1 and plan.pad == 16
    view = _chw(margin_view(px, BOX, 128, plan.pad)).float()  # phase 2's view: [3, 160, 160]
    assert view.shape == (3, 160, 160)
    # At offset 0 the window is the crop itself, as crop_resize renders it (up to resampling).
    centre = _positions(view[:, 16:144, 16:144], 16)
    assert torch.allclose(centre, _positions(_chw(crop_resize(px, BOX, 128)), 16), atol=1.5)
    drawn, _ = draw_offsets(7, 0, 3, np.arange(64), 0.5, plan.limit)
    offsets = np.concatenate([_every_offset(1), drawn])
    n = len(offsets)
    images, grids = view.expand(n, -1, -1, -1).clone(), teacher.expand(n, -1, -1, -1).clone()
    if flip:  # PartitionRows flips the whole view and grid, then takes windows
        images, grids = images.flip(3), grids.flip(2)
    images, targets = apply_windows(images, {"t": {"features": grids}}, offsets, plan)
    assert images.shape == (n, 3, 128, 128) and targets["t"]["features"].shape == (n, 8, 8, 2)
    for i in range(n):
        student = _positions(images[i], 16)
        # Same pixels: every token's mean position agrees to a pixel (a shift is 21 px across, 17.5 down).
        assert (student - targets["t"]["features"][i]).abs().max() < 1.5, offsets[i]
        moved = student - centre.flip(1) if flip else student - centre
        sign = -1 if flip else 1
        step = torch.tensor([sign * offsets[i, 1] * BOX.w / 8, offsets[i, 0] * BOX.h / 8], dtype=torch.float32)
        assert torch.allclose(moved, step.expand_as(moved), atol=1.5)  # the window moved by k patches
    # The check can fail: the teacher's window one token off is a patch away.
    i = 4  # offset (0, 0): the right window is grids[i, 1:9, 1:9]
    assert offsets[i].tolist() == [0, 0] and (_positions(images[i], 16) - grids[i, 1:9, 2:10]).abs().max() > 10


def test_a_mosaic_keys_margin_is_an_exact_block_of_its_canvas():
    """SAM: the margin-extended image sits in its tile's padding; its block of the canvas grid
    is the (g + 2m)² grid of that image alone, so windows of it are exact as above."""
    px = _position_image()
    side = 96 + 2 * 16  # sam@96 in 2x2 tiles of a 256 canvas (128 px tiles), margin 1 of patch 16
    views = torch.stack([_chw(margin_view(px, BOX, 96, 16)).float()] * 4)
    offsets = mosaic.tile_offsets(0, ["a", "b", "c", "d"], 256, 2, side, 16)
    canvas = mosaic.compose(views, 2, 256, offsets)
    grid = F.avg_pool2d(canvas[:, :2], 16).permute(0, 2, 3, 1)  # the toy teacher on the canvas
    blocks = mosaic.split(grid, 4, 2, 256, side, offsets)
    assert blocks.shape == (4, 8, 8, 2)
    for b in blocks:
        assert torch.allclose(b / 255 * torch.tensor([W - 1, H - 1]), _positions(views[0], 16))


def test_a_key_on_another_grid_reads_an_interpolated_window():
    """A resized key (teacher grid 6, student 8): a student offset of k patches is 0.75·k teacher
    tokens, read by linear interpolation; it matches the student's features resized to 6x6 better
    than either neighbouring exact window."""
    px = _position_image()
    teacher = _positions(_chw(margin_view(px, BOX, 84, 14)), 14)  # 6x6 + margin 1 → 8x8
    plan = shift_plan(128, [_key("t", 6)], True, 0.5)
    assert plan is not None and plan.limit == 1
    view = _chw(margin_view(px, BOX, 128, plan.pad)).float()
    offsets = _every_offset(1)
    n = len(offsets)
    images, targets = apply_windows(
        view.expand(n, -1, -1, -1).clone(), {"t": {"features": teacher.expand(n, -1, -1, -1)}}, offsets, plan
    )
    for i in range(n):
        student = align_features(_positions(images[i], 16)[None], (6, 6), False)[0]
        err = (student - targets["t"]["features"][i]).abs()[1:-1, 1:-1].max()  # interior: no resize edge
        ky, kx = (1 + 0.75 * offsets[i]).astype(float)
        for y0, x0 in {(int(np.floor(ky)), int(np.floor(kx))), (int(np.ceil(ky)), int(np.ceil(kx)))}:
            if (y0, x0) != (ky, kx):
                exact = teacher[y0 : y0 + 6, x0 : x0 + 6]
                assert err < (student - exact).abs()[1:-1, 1:-1].max()
        assert err < 2.5


def test_offsets_are_a_pure_function_and_follow_the_law():
    rows = np.arange(40_000)
    k, clamped = draw_offsets(3, 1, 17, rows, 0.5, 1)
    # The same row draws the same offset in any batch, order or subset (so on any rank).
    sub = np.random.default_rng(0).permutation(rows)[:500]
    assert np.array_equal(draw_offsets(3, 1, 17, sub, 0.5, 1)[0], k[sub])
    assert not np.array_equal(draw_offsets(3, 1, 18, rows, 0.5, 1)[0], k)  # another step
    assert not np.array_equal(draw_offsets(3, 0, 17, rows, 0.5, 1)[0], k)  # another partition
    # round(N(0, 0.5)): 0 with P = 0.683, ±1 with 0.311, |k| >= 2 with 0.0047 (clamped to ±1 here).
    raw, _ = draw_offsets(3, 1, 17, rows, 0.5, 8)
    share = lambda c: float(np.mean(c))  # noqa: E731
    assert abs(share(raw == 0) - 0.683) < 0.01 and abs(share(np.abs(raw) == 1) - 0.311) < 0.01
    assert np.array_equal(clamped, np.abs(raw) > 1) and np.array_equal(k, np.clip(raw, -1, 1))
    assert 0.002 < share(clamped) < 0.008
    # Both axes are drawn independently.
    assert abs(np.corrcoef(raw[:, 0], raw[:, 1])[0, 1]) < 0.02


def test_resumed_sampler_draws_the_same_offsets_and_clamps_are_counted():
    plan = shift_plan(128, [_key("t", 8)], True, 1.0)
    rows = np.arange(64)
    one = list(StepBatches(rows, 8, 9, 0, 0, 12, flip=True, shift=plan))
    two = list(StepBatches(rows, 8, 9, 0, 7, 12, flip=True, shift=plan))
    assert one[7:] == two and all(len(item) == 4 for item in one[0])
    # Two ranks take halves of the same draws.
    halves = [list(StepBatches(rows, 8, 9, 0, 0, 12, rank=r, world=2, flip=True, shift=plan)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one
    offsets = np.array([it[2:] for batch in one for it in batch])
    assert np.abs(offsets).max() == 1 and (offsets != 0).any()
    sampler = StepBatches(rows, 8, 9, 0, 0, 12, shift=plan)
    rec = clamp_record([plan], 9, 4, [sampler.order.batch])
    _, c = draw_offsets(9, 0, 4, sampler.order.batch(4), 1.0, 1)
    assert rec == {"shift_clamped": c.mean(), "shift_clamped_draws": int(c.sum())}
    assert clamp_record([None], 9, 4, [sampler.order.batch]) == {}


def test_shift_plans_refuse_what_the_store_cannot_serve():
    with pytest.raises(ShiftError, match=r"^shift at 128 px: bare cached no margin \(featurized with "):
        shift_plan(128, [_key("t", 8), _key("bare", 8, margin=0)], True, 0.5)
    with pytest.raises(ShiftError, match="less than one student patch of the 8x8 grid"):
        shift_plan(128, [_key("t", 16)], True, 0.5)  # 1 token of a 16 grid is half a student patch
    with pytest.raises(ShiftError, match="compact keys t are on another grid"):
        shift_plan(128, [_key("t", 6)], True, 0.5, compact={"t"})
    assert shift_plan(128, [_key("t", 8, margin=0)], False, 0.5) is None  # today's path
    centre = shift_plan(128, [_key("t", 8)], False, 0.5)
    assert centre is not None and centre.limit == 0 and centre.pad == 0  # the centre window only


def test_config_validates_margin_and_shift(repo):
    base = load_pipeline(repo / "pipelines.yaml", "tiny").model_dump()
    raw = dict(base, featurize=dict(base["featurize"], shift_margin=1))
    with pytest.raises(ValueError, match=r"featurize.shift_margin 1: sam@64's mosaic 4 tiles have 0 px of padding"):
        type(load_pipeline(repo / "pipelines.yaml", "tiny")).model_validate(raw)
    raw = dict(base, stages=[dict(base["stages"][0], shift={"enabled": True})])
    with pytest.raises(ValueError, match=r"stages.0.shift.enabled needs featurize.shift_margin >= 1"):
        type(load_pipeline(repo / "pipelines.yaml", "tiny")).model_validate(raw)
    v4 = load_pipeline(repo / "pipelines.yaml", "c-radio-v4-h")
    assert v4.featurize.shift_margin == 1 and all(s.shift.enabled and s.shift.sigma == 0.5 for s in v4.stages)
    tiny = load_pipeline(repo / "pipelines.yaml", "tiny")
    assert tiny.featurize.shift_margin == 0 and not any(s.shift.enabled for s in tiny.stages)


def _killed_at_step_3_and_resumed(config):
    """Stage 1 of ``config`` stopped by an exception at step 3 (after the checkpoint of step 2),
    then run again: the resumed run's :class:`StageResult`."""
    from radio.distill.trainer import train_stage

    class Killed(Exception):
        pass

    def kill(record):
        if record["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        train_stage(config, 1, on_step=kill)
    return train_stage(config, 1)


@pytest.fixture(scope="module")
def margin_store(tmp_path_factory, repo, featurize_here, margin_config):
    """`tiny` reduced to the 192 px partition's keys, featurized with a margin of 1 patch and
    shift on (sigma 1, so some draws clamp): (config, store path)."""
    from radio.shards.sampledata import write_sample_data
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    root = tmp_path_factory.mktemp("shift")
    write_sample_data(root / "shards", images=20, shard_size=10, seed=5)
    config = margin_config(repo, str(root / "shards" / "*.tar"), str(root / "store.zarr"), 4, eval={"held_out": 4})
    stage = config.stages[0].model_copy(
        update={"steps": 4, "checkpoint_every": 2, "shift": ShiftConfig(enabled=True, sigma=1.0)}
    )
    config = config.model_copy(update={"stages": (stage,)})
    featurize_here(config)
    fit_store(FeatureStore(root / "store.zarr"))
    return config, root / "store.zarr"


@pytest.mark.slow
def test_tiny_with_a_margin_trains_with_shift_and_resumes_exactly(margin_store, tmp_path):
    from radio.distill.checks import stage_targets
    from radio.distill.data import PartitionRows
    from radio.distill.run import read_metrics
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore

    config, path = margin_store
    store = FeatureStore(path)
    for key, core in (("clip@168", 12), ("sam@192", 12)):
        prov = store.target(key).provenance
        assert (prov.margin, prov.grid, prov.core_grid) == (1, (core + 2, core + 2), (core, core))
        assert "margin" in prov.record()
    ((_, targets),) = stage_targets(store, config, 1)
    assert [(t.grid, t.margin) for t in targets] == [((12, 12), 1), ((12, 12), 1)]
    # Without a shift plan (evaluation), the targets are the centre window and the image the crop.
    sample = PartitionRows(str(path), 192, targets)[(0, False)]
    assert sample["image"].shape == (3, 192, 192)
    assert sample["targets"]["clip@168"]["features"].shape == (12, 12, store.target("clip@168").feature_dim)

    a = config.model_copy(update={"out": str(tmp_path / "a")})
    full = train_stage(a, 1).losses
    from radio.distill.run import RunFolder

    records = read_metrics(RunFolder(tmp_path / "a").stage(1).metrics)
    assert all(0 <= r["shift_clamped"] <= 1 and r["shift_clamped_draws"] >= 0 for r in records)
    assert sum(r["shift_clamped_draws"] for r in records) > 0  # sigma 1 at a margin of 1: some clamp

    resumed = _killed_at_step_3_and_resumed(config.model_copy(update={"out": str(tmp_path / "b")}))
    assert resumed.start_step == 2 and resumed.losses == full[2:]


@pytest.mark.slow
def test_stochastic_sizes_shift_where_the_margin_covers_a_student_patch_and_resume_exactly(margin_store, tmp_path):
    """Stochastic resolutions with the shift loss: at 192 px (12x12, the keys' grid) the view
    shifts; at 128 px (8x8) one teacher patch of margin is under a student patch, so the steps
    train unshifted on the centre windows, and SAM's exact 12x12 grid sits them out."""
    from radio.config import PartitionConfig
    from radio.distill.checks import stage_targets
    from radio.distill.data import PartitionRows
    from radio.distill.resolutions import size_draws
    from radio.distill.run import RunFolder, read_metrics
    from radio.distill.shift import size_plans, unshifted_sizes
    from radio.distill.trainer import train_stage
    from radio.store.layout import FeatureStore

    config, path = margin_store
    stage = config.stages[0]
    part = stage.partitions[0].model_copy(update={"resolution": None, "resolutions": (128, 192)})
    stage = stage.model_copy(update={"partitions": (PartitionConfig(**part.model_dump()),), "steps": 6})
    config = config.model_copy(update={"stages": (stage,)})
    ((_, targets),) = stage_targets(FeatureStore(path), config, 1)
    plans = size_plans((128, 192), targets, True, 1.0)
    assert {s: p.limit for s, p in plans.items() if p is not None} == {128: 0, 192: 1}
    assert unshifted_sizes(plans) == [128]
    rows = PartitionRows(str(path), 192, targets, shift=plans)
    small = rows.__getitems__([(0, False, 128), (1, True, 128)])
    assert small["image"].shape == (2, 3, 128, 128)
    assert small["targets"]["clip@168"]["features"].shape[1:3] == (12, 12)  # the centre window
    shifted = rows.__getitems__([(0, False, 192, 1, -1)])
    assert shifted["image"].shape == (1, 3, 192, 192)

    a = config.model_copy(update={"out": str(tmp_path / "a")})
    full = train_stage(a, 1).losses
    records = read_metrics(RunFolder(tmp_path / "a").stage(1).metrics)
    drawn = size_draws(stage.seed, 1, 0, np.arange(6), (128, 192)).tolist()
    assert [r["size_0"] for r in records] == drawn and set(drawn) == {128, 192}
    for r, size in zip(records, drawn):
        assert ("shift_clamped" in r) == (size == 192)
        assert (f"{size}:sam@192/features" in r) == (size == 192)
        assert f"{size}:clip@168/features" in r and np.isfinite(r["total"])

    resumed = _killed_at_step_3_and_resumed(config.model_copy(update={"out": str(tmp_path / "b")}))
    assert resumed.start_step == 2 and resumed.losses == full[2:]
