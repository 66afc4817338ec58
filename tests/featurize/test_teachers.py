"""Teacher registry: the contract every teacher keeps, equality with each library's own path,
and weights loading (files, hub routing, errors, reproducible random init)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from copy import deepcopy

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from timm.layers import resample_abs_pos_embed

from radio.featurize.teachers import (
    Teacher,
    TeacherError,
    TeacherOutput,
    create_teacher,
    dinov2,
    get_spec,
    list_teachers,
    register_teacher,
    registry,
    siglip,
)
from radio.featurize.teachers.clip import CLIP_TINY

ALL_NAMES = [
    "clip_tiny",
    "dfn_clip_h14_378",
    "dinov2_b_reg",
    "dinov2_g_reg",
    "dinov2_tiny",
    "dinov3_7b",
    "dinov3_b",
    "dinov3_hplus",
    "dinov3_l",
    "dinov3_tiny",
    "openai_clip_l14_336",
    "sam3",
    "sam_b",
    "sam_h",
    "sam_tiny",
    "siglip2_g_384",
    "siglip2_so400m_384",
    "siglip_so400m_378",
    "siglip_tiny",
]
V4_NAMES = [
    "dinov3_7b",
    "dinov3_b",
    "dinov3_hplus",
    "dinov3_l",
    "dinov3_tiny",
    "sam3",
    "siglip2_g_384",
    "siglip2_so400m_384",
]
TINY = ["clip_tiny", "siglip_tiny", "dinov2_tiny", "sam_tiny"]

# real sizes: (summary_dim, feature_dim, [(input side, grid side), ...])
REAL = {
    "dfn_clip_h14_378": (1024, 1280, [(378, 27), (224, 16)]),
    "openai_clip_l14_336": (768, 1024, [(336, 24), (224, 16)]),
    "siglip_so400m_378": (1152, 1152, [(378, 27), (224, 16)]),
    "dinov2_b_reg": (768, 768, [(224, 16), (378, 27)]),
    "dinov2_g_reg": (1536, 1536, [(378, 27), (224, 16)]),
    "sam_b": (None, 768, [(1024, 64)]),
    "sam_h": (None, 1280, [(1024, 64)]),
}


def _sizes(name: str) -> list[tuple[int, int]]:
    """Native size, another multiple of the patch (168 for the 112 teachers), and a non-square one."""
    spec = get_spec(name)
    if spec.canvas:
        return [(spec.input_size, spec.input_size)]
    other = spec.input_size + 4 * spec.patch
    return [(spec.input_size, spec.input_size), (other, other), (spec.input_size, other)]


def _images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init (SAM inits rel-pos and pos-embed at zero)."""
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _tiny_sam(encoder: torch.nn.Module) -> Sam:
    """A segment-anything ``Sam`` around the tiny encoder (256 canvas, 16×16 grid, 32-d neck)."""
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=32,
            transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )


def _assert_same_output(a: TeacherOutput, b: TeacherOutput) -> None:
    assert (a.summary is None) == (b.summary is None)
    if a.summary is not None:
        assert torch.equal(a.summary, b.summary)
    assert torch.equal(a.features, b.features)


# --- registry ---------------------------------------------------------------------------------


def test_every_family_is_registered_with_a_real_and_a_tiny_size():
    assert list_teachers() == ALL_NAMES
    families = {get_spec(n).family for n in ALL_NAMES if n not in V4_NAMES}  # the v4 set: test_any_teacher.py
    assert families == {"clip", "siglip", "dinov2", "sam"}
    for name in ALL_NAMES:  # every released weight states its licence (`radio teachers`)
        assert (get_spec(name).licence is None) == (get_spec(name).weights is None)
    for name in TINY:
        assert get_spec(name).weights is None
    for name in REAL:
        assert get_spec(name).weights is not None


def test_unknown_teacher_error_message_is_exact():
    expected = (
        "unknown teacher 'nope' (known: clip_tiny, dfn_clip_h14_378, dinov2_b_reg, dinov2_g_reg, dinov2_tiny, "
        "dinov3_7b, dinov3_b, dinov3_hplus, dinov3_l, dinov3_tiny, openai_clip_l14_336, sam3, sam_b, sam_h, "
        "sam_tiny, siglip2_g_384, siglip2_so400m_384, siglip_so400m_378, siglip_tiny; "
        "or hf:MODEL, open_clip:MODEL, timm:MODEL, or package.module:builder)"
    )
    for call in (lambda: create_teacher("nope"), lambda: get_spec("nope")):
        with pytest.raises(TeacherError) as info:
            call()
        assert str(info.value) == expected
        assert isinstance(info.value, ValueError)


def test_register_teacher_as_decorator_and_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = dataclasses.replace(get_spec("dinov2_tiny"), name="dinov2_tiny_copy")

    @register_teacher(spec)
    def build(spec, weights):
        return dinov2.build_dinov2_teacher(spec, weights, arch=dinov2.DINOV2_TINY)

    assert "dinov2_tiny_copy" in list_teachers()
    copy = create_teacher("dinov2_tiny_copy")
    assert copy.spec is spec
    x = _images(112, 112)
    _assert_same_output(copy(x), create_teacher("dinov2_tiny")(x))  # same builder, same seed
    with pytest.raises(TeacherError, match="already registered"):
        register_teacher(spec, build)


# --- contract over every teacher ---------------------------------------------------------------


@pytest.mark.parametrize("name,height,width", [(n, h, w) for n in TINY for h, w in _sizes(n)], ids=lambda v: str(v))
def test_tiny_teacher_contract(name, height, width):
    spec = get_spec(name)
    teacher = create_teacher(name)
    assert isinstance(teacher, Teacher) and teacher.spec is spec
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())

    with torch.no_grad():
        out = teacher(_images(height, width))
    assert isinstance(out, TeacherOutput)
    assert out.features.shape == (2, height // spec.patch, width // spec.patch, spec.feature_dim)
    assert torch.isfinite(out.features).all()
    if spec.summary_dim is None:
        assert out.summary is None
    else:
        assert out.summary.shape == (2, spec.summary_dim)
        assert torch.isfinite(out.summary).all()


@pytest.mark.parametrize("name", TINY)
def test_teacher_refuses_an_input_it_cannot_run(name):
    spec = get_spec(name)
    teacher = create_teacher(name)
    with pytest.raises(TeacherError, match="patch" if not spec.canvas else "canvas"):
        teacher(_images(spec.input_size + spec.patch // 2, spec.input_size + spec.patch // 2))
    if spec.canvas:
        with pytest.raises(TeacherError, match="canvas"):
            teacher(_images(spec.input_size - spec.patch, spec.input_size - spec.patch))


@pytest.mark.parametrize("name", list(REAL))
def test_real_teacher_dims_and_grids_on_meta(name):
    summary_dim, feature_dim, runs = REAL[name]
    spec = get_spec(name)
    assert (spec.summary_dim, spec.feature_dim) == (summary_dim, feature_dim)
    assert spec.grid(spec.input_size) == runs[0][1]

    teacher = create_teacher(name, device="meta")
    assert all(p.is_meta for p in teacher.parameters())  # nothing allocated
    assert not any(p.requires_grad for p in teacher.parameters())
    for side, grid in runs:
        out = teacher(torch.empty(1, 3, side, side, device="meta"))
        assert out.features.shape == (1, grid, grid, feature_dim)
        if summary_dim is None:
            assert out.summary is None
        else:
            assert out.summary.shape == (1, summary_dim)


def test_meta_device_refuses_weights():
    with pytest.raises(TeacherError, match="meta"):
        create_teacher("clip_tiny", weights="anything.pt", device="meta")


def test_dtype_is_applied():
    teacher = create_teacher("dinov2_tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    out = teacher(_images(112, 112).to(torch.bfloat16))
    assert out.features.dtype == torch.bfloat16 and out.summary.dtype == torch.bfloat16


# --- equality with each library's own path ------------------------------------------------------


@torch.no_grad()
def test_clip_equals_open_clip_at_native_size():
    teacher = create_teacher("clip_tiny")
    x = _images(112, 112)
    out = teacher(x)
    assert torch.equal(out.summary, teacher.model.encode_image(x))  # projected, not normalized
    visual = teacher.model.visual
    visual.output_tokens = True  # open_clip's own patch-token output (after ln_post)
    _, tokens = visual(x)
    assert torch.equal(out.features.flatten(1, 2), tokens)


@torch.no_grad()
def test_clip_off_native_size_equals_open_clip_with_resampled_position_embedding():
    teacher = create_teacher("clip_tiny")
    reference = deepcopy(teacher.model)
    pos = reference.visual.positional_embedding
    pos.data = resample_abs_pos_embed(pos.unsqueeze(0), new_size=[12, 12], num_prefix_tokens=1)[0]
    x = _images(168, 168)
    assert torch.equal(teacher(x).summary, reference.encode_image(x))


@torch.no_grad()
def test_siglip_equals_open_clip_at_native_size():
    teacher = create_teacher("siglip_tiny")
    x = _images(112, 112)
    out = teacher(x)
    assert torch.equal(out.summary, teacher.model.encode_image(x))  # attention-pool output
    tokens = teacher.model.visual.trunk.forward_features(x)
    assert teacher.model.visual.trunk.num_prefix_tokens == 0
    assert torch.equal(out.features.flatten(1, 2), tokens)


@torch.no_grad()
def test_siglip_off_native_size_equals_timm_dynamic_size():
    teacher = create_teacher("siglip_tiny")
    trunk = timm.create_model(siglip.TINY_TRUNK_NAME, num_classes=0, global_pool="map", dynamic_img_size=True)
    trunk.load_state_dict(teacher.model.visual.trunk.state_dict())
    trunk.eval()
    x = _images(168, 168)
    out = teacher(x)
    tokens = trunk.forward_features(x)
    assert torch.equal(out.features.flatten(1, 2), tokens)
    assert torch.equal(out.summary, trunk.forward_head(tokens))


@torch.no_grad()
def test_dinov2_equals_timm_forward_features():
    teacher = create_teacher("dinov2_tiny")
    model = teacher.model
    assert model.num_prefix_tokens == 5  # class token + 4 registers
    x = _images(112, 112)
    out = teacher(x)
    tokens = model.forward_features(x)
    assert torch.equal(out.summary, tokens[:, 0])
    assert torch.equal(out.features.flatten(1, 2), tokens[:, 5:])  # registers skipped

    reference = timm.create_model(dinov2.DINOV2_TINY.model_name, dynamic_img_size=True, **dinov2.DINOV2_TINY.kwargs)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x = _images(168, 168)
    out, tokens = teacher(x), reference.forward_features(x)
    assert torch.equal(out.summary, tokens[:, 0])
    assert torch.equal(out.features.flatten(1, 2), tokens[:, 5:])


@torch.no_grad()
def test_sam_equals_segment_anything_encoder_before_the_neck():
    teacher = create_teacher("sam_tiny")
    _perturb(teacher, seed=3)  # rel-pos tables and pos-embed start at zero: make them matter
    sam = _tiny_sam(teacher.model).eval()

    captured = {}
    encoder = sam.image_encoder
    encoder.register_forward_pre_hook(lambda module, args: captured.__setitem__("input", args[0]))
    encoder.blocks[-1].register_forward_hook(lambda module, args, out: captured.__setitem__("pre_neck", out))

    # segment-anything's own preparation: longest side to 256, normalize in 0..255, pad after
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(200, 150, 3), dtype=np.uint8)
    resized = ResizeLongestSide(256).apply_image(image)
    assert resized.shape == (256, 192, 3)
    pixels = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    embedding = encoder(sam.preprocess(pixels))
    assert embedding.shape == (1, 32, 16, 16)  # the neck ran there; the teacher stops before it

    assert torch.equal(teacher(captured["input"]).features, captured["pre_neck"])
    # the teacher's own normalization of [0, 1] images, zero-padded on the canvas the same way
    ours = F.pad(teacher.normalize(pixels / 255), (0, 256 - 192, 0, 0))
    torch.testing.assert_close(ours, captured["input"], atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher(ours).features, captured["pre_neck"], atol=1e-4, rtol=1e-4)


# --- weights ------------------------------------------------------------------------------------


def _library_state(name: str, teacher: Teacher) -> dict[str, torch.Tensor]:
    """What a released checkpoint of this family holds: the library model's state dict
    (for SAM the full ``Sam`` with ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``)."""
    model = _tiny_sam(teacher.model) if name == "sam_tiny" else teacher.model
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(state: dict[str, torch.Tensor], path) -> str:
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", TINY)
def test_checkpoint_file_loads_into_identical_outputs(name, suffix, tmp_path):
    source = create_teacher(name)
    _perturb(source, seed=1)
    state = _library_state(name, source)
    if name == "sam_tiny":
        assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    path = _save(state, tmp_path / f"{name}{suffix}")

    loaded = create_teacher(name, weights=path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = _images(get_spec(name).input_size, get_spec(name).input_size)
    with torch.no_grad():
        out = loaded(x)
        _assert_same_output(out, source(x))
        assert not torch.equal(out.features, create_teacher(name)(x).features)  # the file was used


def test_sam_encoder_only_checkpoint_loads(tmp_path):
    source = create_teacher("sam_tiny")
    _perturb(source, seed=2)
    path = _save(dict(source.model.state_dict()), tmp_path / "encoder.pt")
    x = _images(256, 256)
    with torch.no_grad():
        _assert_same_output(create_teacher("sam_tiny", weights=path)(x), source(x))


def test_missing_weights_file_names_the_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(TeacherError) as info:
        create_teacher("dinov2_tiny", weights=str(path))
    assert str(info.value) == f"dinov2_tiny: weights file not found: {path}"


def test_unfitting_state_dict_names_teacher_and_first_keys(tmp_path):
    wrong = _library_state("dinov2_tiny", create_teacher("dinov2_tiny"))
    path = _save(wrong, tmp_path / "dinov2.pt")
    clip_keys = list(create_teacher("clip_tiny").model.state_dict())
    with pytest.raises(TeacherError) as info:
        create_teacher("clip_tiny", weights=path)
    message = str(info.value)
    assert message.startswith("clip_tiny: state dict does not fit the model; missing: ")
    assert f"({len(clip_keys)} in all)" in message
    for key in clip_keys[:5] + list(wrong)[:5]:
        assert key in message
    assert "unexpected: " in message


def test_wrong_shape_is_reported(tmp_path):
    state = _library_state("clip_tiny", create_teacher("clip_tiny"))
    state["visual.proj"] = torch.zeros(64, 16)
    path = _save(state, tmp_path / "clip.safetensors")
    with pytest.raises(TeacherError, match=r"shape mismatch: visual\.proj \(64, 16\) vs \(64, 32\)"):
        create_teacher("clip_tiny", weights=path)


_UNPICKLED = []


def _mark_unpickled():
    _UNPICKLED.append(True)
    return torch.zeros(1)


class _Payload:
    def __reduce__(self):
        return (_mark_unpickled, ())


def test_checkpoints_are_read_with_weights_only(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"visual.proj": _Payload()}, path)
    with pytest.raises(TeacherError, match="cannot read weights file"):
        create_teacher("clip_tiny", weights=str(path))
    assert _UNPICKLED == []  # the pickled call never ran


def test_sam_refuses_a_hub_id():
    with pytest.raises(TeacherError, match="local checkpoint file"):
        create_teacher("sam_h", weights="hf-hub:facebook/sam-vit-huge")


class _Routed(Exception):
    pass


def test_hub_ids_and_tags_go_to_the_libraries_own_loading(monkeypatch):
    calls = []

    def fake_open_clip(*args, **kwargs):
        calls.append(("open_clip", args, kwargs.get("pretrained")))
        raise _Routed

    def fake_timm(*args, **kwargs):
        calls.append(("timm", args, kwargs.get("pretrained")))
        raise _Routed

    monkeypatch.setattr(open_clip, "create_model", fake_open_clip)
    monkeypatch.setattr(timm, "create_model", fake_timm)
    for name in ("dfn_clip_h14_378", "openai_clip_l14_336", "siglip_so400m_378", "dinov2_g_reg"):
        with pytest.raises(_Routed):
            create_teacher(name, weights=get_spec(name).weights)
    assert calls == [
        ("open_clip", ("hf-hub:apple/DFN5B-CLIP-ViT-H-14-378",), None),
        ("open_clip", ("ViT-L-14-336-quickgelu",), "openai"),
        ("open_clip", ("hf-hub:timm/ViT-SO400M-14-SigLIP-384",), None),
        ("timm", ("hf-hub:timm/vit_giant_patch14_reg4_dinov2.lvd142m",), True),
    ]


def test_hub_model_of_another_size_is_refused(monkeypatch):
    tiny = CLIP_TINY.create()
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: tiny)
    expected = r"dfn_clip_h14_378: built model has .* = \(32, 64, 14\), the spec says \(1024, 1280, 14\)"
    with pytest.raises(TeacherError, match=expected):
        create_teacher("dfn_clip_h14_378", weights="hf-hub:apple/DFN5B-CLIP-ViT-H-14-378")


# --- reproducible random init ------------------------------------------------------------------

_DIGEST_SCRIPT = """
import hashlib, torch
from radio.featurize.teachers import create_teacher
torch.manual_seed({seed})
digest = hashlib.sha256()
for name in {names!r}:
    for key, value in create_teacher(name).state_dict().items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
print(digest.hexdigest())
"""


def _digest(names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        for key, value in create_teacher(name).state_dict().items():
            digest.update(key.encode())
            digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def test_random_init_is_fixed_and_leaves_the_global_generator_alone():
    torch.manual_seed(1)
    first = _digest(TINY)
    torch.manual_seed(2)
    assert _digest(TINY) == first

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    create_teacher("clip_tiny")
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.slow  # a fresh interpreter imports torch, open_clip, timm: ~5-10 s
def test_two_processes_build_identical_tiny_teachers():
    child = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT.format(seed=123, names=TINY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip().splitlines()[-1] == _digest(TINY)
