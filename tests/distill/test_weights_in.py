"""`--init SOURCE`: timm, NVIDIA RADIO and transformers weights into our student (radio.distill.weights_in).

Real timm and transformers models, random-init with small widths through their own kwargs (the key
maps are those of the real models), saved to files and read back as a user's --init would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from radio.config.schema import StudentConfig
from radio.distill.checkpoint import WeightsError
from radio.distill.student import AdaptorSpec, Student, StudentSpec
from radio.distill.trainer import DistillError, fit_state
from radio.distill.weights_in import InitError, convert, open_source, student_fields, to_nvidia, with_student

SPEC = StudentSpec("test", dim=64, depth=2, heads=2)
SMALL = {"embed_dim": 64, "depth": 2, "num_heads": 2}


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (LayerScale gammas and biases included), so nothing maps by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if "gamma" in name or "lambda" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _student(teachers, cpe_max_size: int, register_multiple: int = 8, inner: int = 0, seed: int = 1) -> Student:
    torch.manual_seed(seed)
    return Student(
        SPEC,
        teachers,
        cpe_max_size=cpe_max_size,
        register_multiple=register_multiple,
        adaptor_hidden=96,
        adaptor_inner=inner,
    ).eval()


def _load(student: Student, source) -> set[str]:
    teachers = [(t.name, t.summary_dim is not None) for t in student.teachers]
    state, loaded = convert(source, student.state_dict(), teachers)
    fit_state(student, state, Path(source.label), new_heads=True)
    return loaded


def _tokens(student: Student, x: torch.Tensor) -> torch.Tensor:
    """The student's last-block tokens ``[B, P + h*w, D]`` (prefix and patches)."""
    tokens, _ = student.embed(x)
    for block in student.blocks:
        tokens = block(tokens)
    return tokens


def test_timm_radio_model_is_exact_cpe_grid_included(tmp_path):
    # vit_base_patch16_radio_v3's key map (LayerScale, no_embed_class, 1 CLS + 7 reg tokens) at width 64
    model = timm.create_model("vit_base_patch16_radio_v3", img_size=128, **SMALL).eval()
    _randomize(model)
    file = tmp_path / "radio_v3.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    student = _student([AdaptorSpec("a", 32, 48), AdaptorSpec("b", 32, 48)], cpe_max_size=128)  # 2 CLS + 6 = 8
    _load(student, open_source(file))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.forward_features(student.input_conditioner(x))  # [B, 8 + 64, D]
        ours = _tokens(student, x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4
    grid = model.pos_embed + model.patch_embed.proj.bias  # the grid as it is (timm's patch bias folded in)
    assert torch.allclose(student.cpe.grid.reshape(1, -1, 64), grid, atol=1e-6)


def test_timm_naflex_radio_model_is_exact(tmp_path):
    # naflexvit_base_patch16_radio_v3's key map (Linear patch projection over (ph, pw, C), [1, H, W, D] grid)
    model = timm.create_model("naflexvit_base_patch16_radio_v3", pos_embed_grid_size=(8, 8), **SMALL).eval()
    _randomize(model)
    file = tmp_path / "naflex.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    student = _student([AdaptorSpec("a", 32, 48), AdaptorSpec("b", 32, 48)], cpe_max_size=128)
    _load(student, open_source(file))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.forward_features(student.input_conditioner(x))
        ours = _tokens(student, x)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4


def test_plain_timm_vit_equals_at_its_own_resolution(tmp_path):
    # vit_base_patch16_224's key map: patch bias, class token with its own position embedding, final norm
    model = timm.create_model("vit_base_patch16_224", **SMALL).eval()
    _randomize(model)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    source = open_source(tmp_path / "vit.pth")
    # What is compared: with one CLS token and no registers the student is timm's ViT without its
    # final norm, so at 224 (the checkpoint's own 14x14 grid) every token after the last block is equal.
    one = _student([AdaptorSpec("a", 32, 48)], cpe_max_size=224, register_multiple=1)
    _load(one, source)
    model.norm = torch.nn.Identity()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.forward_features(one.input_conditioner(x))
        ours = _tokens(one, x)
    assert (ours - ref).abs().max() < 1e-4
    # The pipeline's student: CPE grid 128 (2048 px), 3 CLS tokens, 5 registers.
    source = open_source(tmp_path / "vit.pth")
    many = _student([AdaptorSpec(n, 32, 48) for n in "abc"], cpe_max_size=2048)
    fresh = many.registers.detach().clone()
    _load(many, source)
    cls = model.cls_token[0, 0] + model.pos_embed[0, 0]
    assert torch.allclose(many.cls_tokens[0], cls.expand(3, -1))  # repeated, with its position folded in
    assert torch.equal(many.registers, fresh)  # registers start fresh
    grid = model.pos_embed[0, 1:].reshape(14, 14, 64) + model.patch_embed.proj.bias
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # align_corners=True keeps the corners
        assert torch.allclose(many.cpe.grid[0][corner], grid[corner], atol=1e-6)
    assert any("resampled from 14x14 to the CPE grid 128x128" in n for n in source.notes)
    assert any("CLS token is repeated into the student's 3 CLS tokens" in n for n in source.notes)


def test_patch_14_is_resampled_with_a_note(tmp_path):
    model = timm.create_model("vit_base_patch16_224", patch_size=14, img_size=224, **SMALL)
    file = tmp_path / "p14.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    source = open_source(file)
    student = _student([AdaptorSpec("a", 32, 48)], cpe_max_size=256)
    _load(student, source)
    assert student.patch_embed.weight.shape == (64, 3, 16, 16)
    assert any("patch embedding resampled from 14 to 16 px" in n for n in source.notes)


def _released(tmp_path: Path, teachers, inner: int = 1) -> tuple[Student, Path]:
    original = _student([AdaptorSpec(n, s, f) for n, s, f in teachers], cpe_max_size=256, inner=inner, seed=7)
    ckpt = to_nvidia(original.state_dict(), [(n, s is not None) for n, s, _ in teachers], cpe_max_size=256)
    torch.save(ckpt, tmp_path / "radio_hub.pth.tar")
    return original, tmp_path / "radio_hub.pth.tar"


def test_nvidia_torch_hub_checkpoint_round_trips_exactly_with_adaptors(tmp_path):
    teachers = [("clip", 32, 48), ("siglip", 40, 40), ("sam", None, 56)]
    original, file = _released(tmp_path, teachers)
    source = open_source(file)
    assert student_fields(source)["cpe_max_size"] == 256 and student_fields(source)["adaptor_inner"] == 1
    student = _student([AdaptorSpec(n, s, f) for n, s, f in teachers], cpe_max_size=256, inner=1, seed=3)
    loaded = _load(student, source)
    assert loaded == {"clip", "siglip", "sam"}
    theirs, ours = original.state_dict(), student.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_nvidia_heads_of_other_dims_or_names_start_fresh(tmp_path):
    _, file = _released(tmp_path, [("clip", 32, 48), ("sam", None, 56)])
    source = open_source(file)
    student = _student([AdaptorSpec("clip", 32, 40), AdaptorSpec("dino", 24, 24)], cpe_max_size=256, inner=1)
    before = student.state_dict()["adaptors.dino.features.fc1.weight"].clone()
    assert _load(student, source) == set()
    assert torch.equal(student.state_dict()["adaptors.dino.features.fc1.weight"], before)
    assert any(
        n.endswith(
            "head clip does not fit (adaptors.clip.features.fc2.weight: (48, 96) there, (40, 96) here): it starts fresh"
        )
        for n in source.notes
    )
    assert any("no CLS token for dino: it starts fresh" in n for n in source.notes)


def test_args_that_disagree_with_the_pipelines_student_are_one_error(tmp_path):
    _, file = _released(tmp_path, [("clip", 32, 48)])
    source = open_source(file)
    set_here = StudentConfig(size="b", cpe_max_size=512)
    with pytest.raises(InitError) as e:
        with_student(set_here, student_fields(source), source.label)
    assert str(e.value) == (
        f"--init {file}: its student has cpe_max_size 256, the pipeline's student: says cpe_max_size 512; "
        "set student.cpe_max_size: 256 (or remove it)"
    )
    assert with_student(StudentConfig(size="b"), {"cpe_max_size": 256}, "x").cpe_max_size == 256  # a default: set


def test_transformers_radio_model_folder_gives_equal_features(tmp_path):
    from transformers import RadioConfig, RadioModel

    config = RadioConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, max_img_size=128,
        num_cls_tokens=2, num_registers=6, summary_idxs=[0, 1],
    )  # fmt: skip
    torch.manual_seed(0)
    model = RadioModel(config).eval()
    _randomize(model)
    model.save_pretrained(tmp_path / "hf")
    source = open_source(tmp_path / "hf")
    assert student_fields(source)["cpe_max_size"] == 128
    student = _student([AdaptorSpec("a", 32, 48), AdaptorSpec("b", 32, 48)], cpe_max_size=128)
    _load(student, source)
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        ours = student(x)
    assert (ours.features.reshape(2, -1, 64) - ref.features).abs().max() < 1e-4
    assert (ours.summary.flatten(1) - ref.summary).abs().max() < 1e-4


def test_shapes_that_do_not_fit_are_one_line_naming_the_tensor(tmp_path):
    model = timm.create_model("vit_base_patch16_224", embed_dim=32, depth=2, num_heads=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    student = _student([AdaptorSpec("a", 32, 48)], cpe_max_size=224)
    file = tmp_path / "w.safetensors"
    with pytest.raises(InitError) as e:
        _load(student, open_source(file))
    assert str(e.value) == (
        f"{file}: weights do not fit this student (width 32, not 64: patch_embed.weight (32, 3, 16, 16) != (64, 3, 16, 16))"
    )
    # the same width, another depth: the first tensor the student lacks
    deeper = timm.create_model("vit_base_patch16_224", embed_dim=64, depth=3, num_heads=2)
    save_file({k: v.contiguous() for k, v in deeper.state_dict().items()}, str(file))
    with pytest.raises(DistillError) as e2:
        _load(student, open_source(file))
    assert str(e2.value).startswith(f"{file}: weights do not fit this student (missing [], unexpected ['blocks.2.")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"args": _RunsCode(marker), "state_dict": {}}, tmp_path / "evil.pth.tar")
    with pytest.raises(WeightsError) as e:
        open_source(tmp_path / "evil.pth.tar")
    assert str(e.value).endswith(
        "not a radio checkpoint (it holds objects other than tensors, which radio never unpickles)"
    )
    assert not marker.exists()


def test_a_source_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(InitError, match=r"^--init .*nothing: no such file or folder"):
        open_source(tmp_path / "nothing")


@pytest.mark.slow
def test_distill_init_from_a_released_checkpoint_warms_up_its_heads(tiny_store, tmp_path, capsys):
    import shutil

    from radio.distill.checkpoint import load_checkpoint, load_weights
    from radio.distill.final_weights import student_state
    from radio.distill.trainer import build_student, train_stage
    from radio.errors import RadioError
    from radio.store.layout import FeatureStore
    from radio.store.normalizers import fit_store

    config, path = tiny_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    fit_store(FeatureStore(copy))
    config = config.model_copy(update={"store": config.store.model_copy(update={"path": str(copy)})})
    released = build_student(FeatureStore(copy), config, seed=5)
    teachers = [(t.name, t.summary_dim is not None) for t in released.teachers]
    ckpt = to_nvidia(released.state_dict(), teachers, cpe_max_size=config.student.cpe_max_size)
    ckpt["args"].teachers[teachers.index(("dinov2", True))]["name"] = "dino_v2"  # a teacher we call otherwise
    file = tmp_path / "released.pth.tar"
    torch.save(ckpt, file)
    train_stage(config.model_copy(update={"out": str(tmp_path / "run")}), 1, steps=1, init=str(file))
    err = capsys.readouterr().err
    assert f"note: dinov2: head not in {file}: initialised at random (trained alone for the first 5 steps)" in err
    for name in ("clip", "sam", "siglip"):
        assert (
            f"note: {name}: head loaded from {file}, trained in a target space it does not record "
            "(RADIO's own PHI-S): it warms up with the backbone frozen"
        ) in err
    final = student_state(load_weights(tmp_path / "run" / "stage1" / "final.safetensors"))
    start = released.state_dict()
    assert torch.equal(final["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])  # warm-up: frozen
    assert not torch.equal(final["adaptors.clip.features.fc2.weight"], start["adaptors.clip.features.fc2.weight"])
    saved = load_checkpoint(tmp_path / "run" / "stage1" / "checkpoint.pt")
    assert saved["new_heads"] == ["clip", "dinov2", "sam", "siglip"]

    # args that disagree with the pipeline's student (tiny sets cpe_max_size 512): one error naming both
    other = Student("tiny", released.teachers, cpe_max_size=256, adaptor_hidden=config.student.adaptor_hidden)
    torch.save(to_nvidia(other.state_dict(), teachers, cpe_max_size=256), file)
    with pytest.raises(RadioError) as e:
        train_stage(config.model_copy(update={"out": str(tmp_path / "run2")}), 1, steps=1, init=str(file))
    assert str(e.value) == (
        f"--init {file}: its student has cpe_max_size 256, the pipeline's student: says cpe_max_size 512; "
        "set student.cpe_max_size: 256 (or remove it)"
    )


def _cache(root: Path, repo: str) -> Path:
    """A Hugging Face cache entry for ``repo`` (as `hf download` leaves it): its snapshot folder."""
    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0" * 40)
    snapshot = entry / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    return snapshot


def test_timm_and_hub_names_resolve_through_the_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    name = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    with pytest.raises(InitError) as e:
        open_source(f"timm:{name}")
    assert str(e.value) == (
        f"--init timm:{name}: timm/{name} is not in the Hugging Face cache {tmp_path / 'hub'}; "
        f"download it first (`hf download timm/{name}`; HF_HUB_CACHE / HF_HOME select the cache)"
    )
    model = timm.create_model("vit_base_patch16_224", **SMALL)  # the real name's key map, at width 64
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(_cache(tmp_path / "hub", f"timm/{name}") / "model.safetensors"),
    )
    source = open_source(f"timm:{name}")
    assert source.layout == "timm"
    assert torch.allclose(source.backbone.mean, torch.tensor([0.5, 0.5, 0.5]))  # timm's config, not CLIP's
    from transformers import RadioConfig, RadioModel

    RadioModel(
        RadioConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, max_img_size=128)
    ).save_pretrained(_cache(tmp_path / "hub", "org/radio"))
    assert student_fields(open_source("hf-hub:org/radio"))["cpe_max_size"] == 128
    with pytest.raises(InitError, match=r"^--init hf-hub:org/absent: org/absent is not in the Hugging Face cache "):
        open_source("hf-hub:org/absent")


def test_a_checkpoint_carrying_its_normalizers_is_reprojected_not_warmed_up(tmp_path):
    from radio.distill.spaces import TargetSpace, records
    from radio.distill.trainer import _load_source

    teachers = [("clip", 32, 48), ("sam", None, 56)]
    original = _student([AdaptorSpec(n, s, f) for n, s, f in teachers], cpe_max_size=256, seed=7)
    ckpt = to_nvidia(original.state_dict(), [(n, s is not None) for n, s, _ in teachers], cpe_max_size=256)
    ckpt["normalizers"] = records({"clip": TargetSpace.identity(48)})  # the clip head's space, recorded
    torch.save(ckpt, tmp_path / "with_spaces.pth.tar")
    student = _student([AdaptorSpec(n, s, f) for n, s, f in teachers], cpe_max_size=256)
    spaces, fresh, released = _load_source(student, open_source(tmp_path / "with_spaces.pth.tar"), None)
    assert spaces is not None and spaces["clip"].mode == "none"  # the trainer re-projects clip from it
    assert (fresh, released) == (set(), {"sam"})  # sam's space is not recorded: it warms up
