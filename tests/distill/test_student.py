"""Student: token layout, shapes at any multiple of 16, CPE train/eval, intermediates, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radio.distill.adaptors import AdaptorSpec
from radio.distill.cpe import CPE, draw_crops, resample_crops, resize_then_crop
from radio.distill.student import OPENAI_CLIP_MEAN, Student, StudentSpec, student_spec

TEACHERS = [
    AdaptorSpec("dfn_clip", summary_dim=24, feature_dim=40),
    AdaptorSpec("siglip", summary_dim=20, feature_dim=20),
    AdaptorSpec("dinov2", summary_dim=32, feature_dim=32),
    AdaptorSpec("sam", summary_dim=None, feature_dim=16),
]


def tiny(size: str | StudentSpec = "tiny", teachers=TEACHERS, **kwargs) -> Student:
    torch.manual_seed(0)
    kwargs = {"cpe_max_size": 256, "adaptor_hidden": 32, **kwargs}
    return Student(size, teachers, **kwargs)


def images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# -- shapes and token layout ------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("height, width", [(64, 64), (128, 128), (64, 96)])
def test_output_shapes(height, width, train):
    model = tiny().train(train)
    out = model(images(2, height, width))
    h, w = height // 16, width // 16
    assert out.summary.shape == (2, 3, 64)  # three teachers with a summary
    assert out.features.shape == (2, h, w, 64)
    assert list(out.adaptors) == [t.name for t in TEACHERS]
    for spec in TEACHERS:
        adaptor = out.adaptors[spec.name]
        assert adaptor.features.shape == (2, h, w, spec.feature_dim)
        if spec.summary_dim is None:
            assert adaptor.summary is None
        else:
            assert adaptor.summary.shape == (2, spec.summary_dim)


def test_summary_heads_read_their_own_cls_token():
    model = tiny().eval()
    out = model(images(2, 64, 64))
    for name, slot in model.summary_slots.items():
        expected = model.adaptors[name].summary(out.summary[:, slot])
        torch.testing.assert_close(out.adaptors[name].summary, expected, rtol=0, atol=0)
    assert model.summary_slots == {"dfn_clip": 0, "siglip": 1, "dinov2": 2}


@pytest.mark.parametrize("n_summary", [1, 2, 3, 4, 5])
def test_prefix_tokens_are_a_multiple_of_eight(n_summary):
    teachers = [AdaptorSpec(f"t{i}", 8, 8) for i in range(n_summary)] + [AdaptorSpec("sam", None, 8)]
    model = tiny(teachers=teachers)
    assert model.num_cls == n_summary
    assert model.num_prefix_tokens % 8 == 0
    assert model.num_registers == 8 - n_summary  # the fewest registers that reach a multiple
    tokens, _ = model.embed(images(1, 32, 32))
    assert tokens.shape[1] == 8 + 4


def test_no_registers_when_cls_count_is_already_a_multiple():
    teachers = [AdaptorSpec(f"t{i}", 8, 8) for i in range(4)]
    assert tiny(teachers=teachers, register_multiple=4).num_registers == 0
    assert tiny(teachers=teachers, register_multiple=1).registers is None


def test_input_conditioner_uses_openai_clip_normalization():
    model = tiny()
    mean_image = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    assert model.input_conditioner(mean_image).abs().max() < 1e-6


@pytest.mark.parametrize("height, width", [(100, 96), (64, 72), (15, 16)])
def test_input_off_the_patch_grid_is_refused(height, width):
    with pytest.raises(ValueError) as error:
        tiny()(torch.rand(1, 3, height, width))
    assert str(error.value) == f"student input size {height}x{width} (HxW) is not a multiple of the patch size 16"


def test_unknown_size_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown student size 'xl'; known sizes: tiny, b, so400m, l, h, g"):
        student_spec("xl")


def test_duplicate_teacher_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        tiny(teachers=[AdaptorSpec("clip", 8, 8), AdaptorSpec("clip", 8, 8)])


def test_state_dict_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny()
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "student.safetensors")
    other = Student("tiny", TEACHERS, cpe_max_size=256, adaptor_hidden=32)
    other.load_state_dict(load_file(tmp_path / "student.safetensors"), strict=True)
    x = images(1, 32, 48)
    torch.testing.assert_close(other.eval()(x).features, model.eval()(x).features, rtol=0, atol=0)


def test_no_weight_decay_names_are_parameters():
    model = tiny()
    params = dict(model.named_parameters())
    assert model.no_weight_decay() == {"cpe.grid", "cls_tokens", "registers"}
    assert model.no_weight_decay() <= params.keys()


# -- real sizes on the meta device ------------------------------------------------------------------

# Body = patch embedding + CLS/registers + blocks (no CPE table, no adaptors). timm's
# vit_base_patch16_224 is 86.6M with its 0.15M position table and 0.77M classifier.
BODY_RANGE = {"b": (85e6, 87e6), "l": (302e6, 305e6), "h": (628e6, 633e6), "g": (1.12e9, 1.15e9)}


@pytest.mark.parametrize("size", ["b", "l", "h", "g"])
def test_real_sizes_parameter_counts(size):
    teachers = [
        AdaptorSpec("dfn_clip", 1024, 1280),
        AdaptorSpec("siglip", 1152, 1152),
        AdaptorSpec("dinov2", 1536, 1536),
        AdaptorSpec("sam", None, 1280),
    ]
    with torch.device("meta"):
        model = Student(size, teachers)
    spec = student_spec(size)
    counts = {"body": 0, "cpe": 0, "adaptors": 0}
    for name, p in model.named_parameters():
        counts[name.split(".")[0] if name.startswith(("cpe.", "adaptors.")) else "body"] += p.numel()
    low, high = BODY_RANGE[size]
    assert low < counts["body"] < high
    assert counts["cpe"] == 128 * 128 * spec.dim  # 2048 px / 16
    hidden = 1520
    head = lambda out: spec.dim * hidden + hidden + 2 * hidden + hidden * out + out  # noqa: E731
    expected = sum(head(t.feature_dim) + (head(t.summary_dim) if t.summary_dim else 0) for t in teachers)
    assert counts["adaptors"] == expected
    assert model.num_prefix_tokens == 8


# -- CPE --------------------------------------------------------------------------------------------


def small_cpe(grid_size: int = 9, dim: int = 5) -> CPE:
    torch.manual_seed(0)
    return CPE(dim, max_size=16 * grid_size)


def test_cpe_eval_at_the_grid_size_is_the_grid():
    cpe = small_cpe().eval()
    out = cpe(9, 9, batch=2)
    assert out.shape == (2, 81, 5)
    assert torch.equal(out[1], cpe.grid.reshape(81, 5))


def test_cpe_eval_non_square_is_the_top_left_window():
    cpe = small_cpe().eval()
    out = cpe(4, 9, batch=1).reshape(4, 9, 5)  # max side 9 = G: no resize
    assert torch.equal(out, cpe.grid[0, :4])


def test_cpe_eval_upsampling_keeps_grid_points():
    # With align_corners=True, resizing G to 2G-1 puts every other sample exactly on a grid point.
    cpe = small_cpe().eval()
    out = cpe(17, 17, batch=1).reshape(17, 17, 5)
    torch.testing.assert_close(out[::2, ::2], cpe.grid[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("h, w", [(6, 6), (5, 12), (12, 7)])
def test_cpe_eval_is_resize_then_crop_and_deterministic(h, w):
    cpe = small_cpe().eval()
    side = max(h, w)
    table = F.interpolate(cpe.grid.permute(0, 3, 1, 2), size=(side, side), mode="bilinear", align_corners=True)
    expected = table[0, :, :h, :w].permute(1, 2, 0).reshape(h * w, 5)
    first, second = cpe(h, w, batch=3), cpe(h, w, batch=3)
    assert torch.equal(first, second)
    torch.testing.assert_close(first[2], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(resize_then_crop(cpe.grid, h, w)[0], expected, rtol=0, atol=1e-6)


def test_cpe_train_differs_per_call_and_per_image_but_is_seeded():
    cpe = small_cpe().train()
    first, second = cpe(6, 8, batch=4), cpe(6, 8, batch=4)
    assert first.shape == (4, 48, 5)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first[0], first[1])  # each image has its own crop
    torch.manual_seed(7)
    global_a = cpe(6, 8, batch=4)
    torch.manual_seed(7)
    global_b = cpe(6, 8, batch=4)
    assert torch.equal(global_a, global_b)
    gen_a = cpe(6, 8, batch=4, generator=torch.Generator().manual_seed(3))
    gen_b = cpe(6, 8, batch=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(gen_a, gen_b)


def test_crop_boxes_follow_radio_side_and_aspect_and_stay_inside_the_grid():
    crops = draw_crops(20000, torch.Generator().manual_seed(0))
    x0, y0, width, height, keep = crops.unbind(1)
    assert (keep == 1).all()  # no position dropout unless asked
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + width <= 1 + 1e-6).all() and (y0 + height <= 1 + 1e-6).all()
    unclamped = (width < 1) & (height < 1)
    side, a = (width * height).sqrt()[unclamped], (width / height).sqrt()[unclamped]  # width = s·a, height = s/a
    assert side.min() >= 0.1**0.5 - 1e-5 and a.min() >= 3 / 4 - 1e-5 and a.max() <= 4 / 3 + 1e-5
    # Clamping needs s·a > 1, so s > 3/4: below that the side is uniform on [sqrt(0.1), 1] (RADIO),
    # P(s < 0.6) = (0.6 - sqrt(0.1)) / (1 - sqrt(0.1)) = 0.415 (uniform *area* would give 0.289).
    assert abs((side < 0.6).float().sum() / len(width) - (0.6 - 0.1**0.5) / (1 - 0.1**0.5)) < 0.015
    assert abs((width * height).mean() - 0.457) < 0.01  # clamped mean area (uniform area: 0.544)
    # log a is uniform on [log 3/4, log 4/3]: half of the unclamped boxes are wider than tall
    assert abs((a > 1).float().mean() - 0.5) < 0.02


def test_position_dropout_zeroes_the_whole_encoding_of_a_share_of_images():
    keep = draw_crops(20000, torch.Generator().manual_seed(1), pos_dropout=0.1)[:, 4]
    assert set(keep.unique().tolist()) == {0.0, 1.0} and abs((keep == 0).float().mean() - 0.1) < 0.01
    cpe = CPE(8, max_size=64, patch=16, pos_dropout=0.5).train()
    out = cpe(3, 4, batch=64, generator=torch.Generator().manual_seed(2))  # [B, h*w, D]
    dropped = out.abs().amax(dim=(1, 2)) == 0
    assert 16 < int(dropped.sum()) < 48  # whole images dropped, about half of them
    assert (out[~dropped].abs().amax(dim=2) > 0).all()  # the others keep every token's encoding
    assert torch.equal(cpe.eval()(3, 4, batch=2), cpe(3, 4, batch=2))  # never at inference


def test_crop_resampling_orientation():
    # Full width, top half: rows 0..4 of a 9x9 grid, columns all; checks x/y are not swapped.
    grid = torch.randn(1, 9, 9, 5, generator=torch.Generator().manual_seed(0))
    crops = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 1.0]])
    out = resample_crops(grid, crops, 5, 9).reshape(2, 5, 9, 5)
    torch.testing.assert_close(out[0], grid[0, :5], rtol=0, atol=1e-5)
    full = resample_crops(grid, crops[1:], 9, 9).reshape(9, 9, 5)
    torch.testing.assert_close(full, grid[0], rtol=0, atol=1e-5)


def test_student_training_is_reproducible_with_a_generator():
    model = tiny().train()
    x = images(2, 64, 48)
    a = model(x, generator=torch.Generator().manual_seed(5)).features
    b = model(x, generator=torch.Generator().manual_seed(5)).features
    c = model(x, generator=torch.Generator().manual_seed(6)).features
    assert torch.equal(a, b) and not torch.allclose(a, c)


# -- intermediate layers ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [-1, 1])
def test_sparse_last_block_equals_forward_features(index):
    model = tiny().eval()
    x = images(2, 48, 64)
    final, (last,) = model.forward_intermediates(x, [index])
    expected = model(x).features
    assert torch.equal(last, expected) and torch.equal(final.features, expected)


def test_dense_with_every_block_equals_sparse():
    model = tiny(StudentSpec("tiny4", 64, 4, 2)).eval()
    x = images(2, 32, 48)
    _, sparse = model.forward_intermediates(x, [0, 1, 2, 3], "sparse")
    _, dense = model.forward_intermediates(x, 4, "dense")  # int: the last 4 blocks
    assert len(dense) == 4
    for s, d in zip(sparse, dense):
        assert torch.equal(s, d)


def test_dense_averages_each_group_of_blocks():
    model = tiny(StudentSpec("tiny4", 64, 4, 2)).eval()
    x = images(2, 32, 32)
    _, blocks = model.forward_intermediates(x, [0, 1, 2, 3], "sparse")
    final, dense = model.forward_intermediates(x, [3, 1], "dense")  # sorted: groups 0..1 and 2..3
    torch.testing.assert_close(dense[0], (blocks[0] + blocks[1]) / 2)
    torch.testing.assert_close(dense[1], (blocks[2] + blocks[3]) / 2)
    assert torch.equal(final.features, blocks[3])


def test_bad_indices_are_refused():
    model = tiny()
    for bad in ([2], [-3], [0, 0], []):
        with pytest.raises(ValueError, match="block indices"):
            model.forward_intermediates(images(1, 32, 32), bad)
    with pytest.raises(ValueError, match="aggregation"):
        model.forward_intermediates(images(1, 32, 32), [0], "mean")


# -- gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_gradients_reach_every_adaptor_and_the_cpe_grid(train):
    model = tiny().train(train)
    out = model(images(2, 48, 64))
    loss = out.summary.square().mean() + out.features.square().mean()
    for adaptor in out.adaptors.values():
        loss = loss + adaptor.features.square().mean()
        if adaptor.summary is not None:
            loss = loss + adaptor.summary.square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adaptor_inner_blocks_are_radio_mlp2():
    from radio.distill.adaptors import AdaptorMLP

    plain, mlp2 = AdaptorMLP(16, 24, 8), AdaptorMLP(16, 24, 8, inner=1)
    # inner = 0 keeps the 2-layer names (old checkpoints load); inner = 1 adds x + Linear(GELU(LN(x))).
    assert [n for n, _ in plain.named_parameters()] == [
        "fc1.weight",
        "fc1.bias",
        "norm.weight",
        "norm.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    mlp2.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(5, 16)
    h = mlp2.fc1(x)
    block = mlp2.inner[0]
    want = mlp2.fc2(mlp2.act(mlp2.norm(h + block.fc(torch.nn.functional.gelu(block.norm(h))))))
    torch.testing.assert_close(mlp2(x), want)
    with torch.no_grad():
        block.fc.weight.zero_(), block.fc.bias.zero_()
    torch.testing.assert_close(mlp2(x), plain(x))  # a zero inner block is the identity
