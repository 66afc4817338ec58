"""Any teacher (issue 24): timm / open_clip / hf names, module:builder, the C-RADIOv4 set.

Equality with each library's own forward on random-init small configs of the same
architecture; the real sizes on the meta device (dims, grid, parameter count).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap

import open_clip
import pytest
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import vit_so400m_patch16_siglip_384

from radio.featurize.teachers import TeacherError, create_teacher, get_spec, hf_family, open_clip_family, timm_family
from radio.featurize.teachers.clip import OpenClipArch
from radio.featurize.teachers.loading import seeded_init

# real sizes: (summary_dim, feature_dim, native side, grid side, parameters of the image model)
V4_REAL = {
    "dinov3_7b": (4096, 4096, 256, 16, 6_716_030_976),
    "dinov3_hplus": (1280, 1280, 256, 16, 840_509_440),
    "dinov3_l": (1024, 1024, 256, 16, 303_079_424),
    "dinov3_b": (768, 768, 256, 16, 85_641_216),
    "siglip2_g_384": (1536, 1536, 384, 24, 1_163_659_776),
    "siglip2_so400m_384": (1152, 1152, 384, 24, 428_256_704),
    "sam3": (None, 1024, 1008, 72, 446_236_672),
}


def _images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _image_model(teacher: torch.nn.Module) -> torch.nn.Module:
    model = teacher.model
    return model.visual if hasattr(model, "visual") else model


# --- the C-RADIOv4 teachers at real size, on the meta device -----------------------------------


@pytest.mark.parametrize("name", list(V4_REAL))
def test_v4_teacher_real_size_on_meta(name):
    summary_dim, feature_dim, side, grid, params = V4_REAL[name]
    spec = get_spec(name)
    assert (spec.summary_dim, spec.feature_dim, spec.input_size, spec.grid(side)) == (
        summary_dim,
        feature_dim,
        side,
        grid,
    )
    assert spec.licence and spec.weights
    teacher = create_teacher(name, device="meta")
    assert all(p.is_meta for p in teacher.parameters())  # a 7B model allocates nothing
    assert sum(p.numel() for p in _image_model(teacher).parameters()) == params
    out = teacher(torch.empty(1, 3, side, side, device="meta"))
    assert out.features.shape == (1, grid, grid, feature_dim)
    assert (out.summary is None) if summary_dim is None else out.summary.shape == (1, summary_dim)


def test_written_out_specs_are_what_the_libraries_say():
    """The registered v4 specs equal the specs read off each library's meta-device model."""
    for name, arch in timm_family.DINOV3_ARCHS.items():
        spec = get_spec(name)
        assert timm_family.describe(name, arch, family="dinov3", weights=spec.weights, licence=spec.licence) == spec
    for name, arch in open_clip_family.SIGLIP2_ARCHS.items():
        assert open_clip_family.describe(name, arch, family="siglip2", licence="apache-2.0") == get_spec(name)
    from transformers import Sam3Config

    sam3 = hf_family.describe(
        "sam3", "facebook/sam3", config=Sam3Config(), weights="hf-hub:facebook/sam3", licence="sam-license"
    )
    assert sam3 == get_spec("sam3")


# --- timm ---------------------------------------------------------------------------------------


def test_timm_by_name_equals_timm_forward():
    name = "timm:test_vit"  # timm's own tiny ViT (64 wide, patch 16, native 160)
    spec = get_spec(name)
    assert (spec.library, spec.family, spec.patch, spec.input_size, spec.feature_dim) == ("timm", "timm", 16, 160, 64)
    teacher = create_teacher(name)
    with seeded_init():
        model = timm.create_model("test_vit", pretrained=False).eval()
    for height, width in ((160, 160), (64, 96)):  # native, and another grid (timm's dynamic size)
        x = _images(height, width)
        out = teacher(x)
        with torch.no_grad():
            model.set_input_size((height, width))
            tokens = model.forward_features(x)
            pooled = model.forward_head(tokens, pre_logits=True)  # timm's image embedding
        assert torch.equal(out.summary, pooled)
        grid = (height // 16, width // 16)
        assert torch.equal(out.features, tokens[:, model.num_prefix_tokens :].reshape(2, *grid, 64))


def test_dinov3_summary_is_the_class_token_and_registers_are_dropped():
    teacher = create_teacher("dinov3_tiny")
    arch = timm_family.DINOV3_ARCHS["dinov3_tiny"]
    with seeded_init():
        model = timm.create_model(arch.model_name, pretrained=False, **arch.kwargs).eval()
    assert model.num_prefix_tokens == 5  # class + 4 registers
    x = _images(128, 96)
    out = teacher(x)
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert torch.equal(out.summary, tokens[:, 0])
    assert torch.equal(out.features, tokens[:, 5:].reshape(2, 8, 6, 48))


# --- open_clip ----------------------------------------------------------------------------------

TINY_SIGLIP2_TRUNK = "radio_test_vit_tiny_patch16_siglip2_64"


@register_model
def radio_test_vit_tiny_patch16_siglip2_64(pretrained: bool = False, **kwargs):
    """SigLIP2 so400m/16's timm trunk (MAP head) at test size."""
    return vit_so400m_patch16_siglip_384(
        pretrained=False, **dict(kwargs, img_size=64, embed_dim=32, depth=2, num_heads=2)
    )


TINY_SIGLIP2 = OpenClipArch(
    "ViT-SO400M-16-SigLIP2-384",
    overrides=dict(
        embed_dim=32,
        vision_cfg=dict(image_size=64, timm_model_name=TINY_SIGLIP2_TRUNK, timm_pool="map", timm_proj="none"),
        text_cfg=dict(context_length=16, vocab_size=1000, width=32, heads=2, layers=1, hf_tokenizer_name=None),
    ),
)


def test_open_clip_siglip2_equals_encode_image_and_trunk_features():
    spec = open_clip_family.describe("tiny_siglip2", TINY_SIGLIP2)
    assert (spec.family, spec.patch, spec.input_size, spec.summary_dim, spec.mean) == (
        "siglip",
        16,
        64,
        32,
        (0.5, 0.5, 0.5),  # from the webli tag's pretrained config, not open_clip's random-init default
    )
    with seeded_init():
        teacher = open_clip_family.build_open_clip_teacher(spec, None, arch=TINY_SIGLIP2).eval()
    model = teacher.model
    x = _images(64, 64)
    with torch.no_grad():
        out = teacher(x)
        assert torch.equal(out.summary, model.encode_image(x))
        tokens = model.visual.trunk.forward_features(x)
    assert torch.equal(out.features, tokens.reshape(2, 4, 4, 32))


def tiny_open_clip_folder(tmp_path) -> str:
    """A folder in open_clip's ``local-dir:`` layout: a tiny CLIP config, no weights (random init)."""
    folder = tmp_path / "open_clip"
    folder.mkdir()
    model_cfg = dict(
        embed_dim=32,
        vision_cfg=dict(image_size=64, layers=2, width=64, head_width=32, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    preprocess_cfg = dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    (folder / "open_clip_config.json").write_text(json.dumps(dict(model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)))
    return str(folder)


def test_open_clip_folder_by_name_equals_encode_image(tmp_path):
    folder = tiny_open_clip_folder(tmp_path)
    teacher = create_teacher(f"open_clip:local-dir:{folder}")
    spec = teacher.spec
    assert (spec.family, spec.patch, spec.input_size, spec.std) == ("clip", 16, 64, (0.25, 0.25, 0.25))
    with seeded_init():
        model = open_clip.create_model(f"local-dir:{folder}").eval()
    x = _images(64, 64)
    model.visual.output_tokens = True  # open_clip's own patch tokens (after ln_post)
    with torch.no_grad():
        embedding = model.encode_image(x)[0]
        _, tokens = model.visual(x)
    out = teacher(x)
    assert torch.equal(out.summary, embedding)
    assert torch.equal(out.features, tokens.reshape(2, 4, 4, 64))


def test_open_clip_builtin_name_reads_the_registered_siglip2_spec():
    spec = get_spec("open_clip:ViT-SO400M-16-SigLIP2-384")
    registered = get_spec("siglip2_so400m_384")
    assert dataclasses.replace(spec, family="siglip2", licence="apache-2.0", name=registered.name) == registered


# --- transformers -------------------------------------------------------------------------------


def _save(config, tmp_path, name: str) -> str:
    folder = tmp_path / name
    config.save_pretrained(folder)
    return str(folder)


def tiny_dinov3_folder(tmp_path) -> str:
    from transformers import DINOv3ViTConfig

    config = DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=4
    )
    config.image_size = 64
    return _save(config, tmp_path, "dinov3")


def tiny_sam3_folder(tmp_path) -> str:
    from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig

    config = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,  # a 16x16 canvas of patch 14, as SAM3's 72x72 at 1008
        pretrain_image_size=112,
        window_size=4,
        global_attn_indexes=[1],
    )
    return _save(config, tmp_path, "sam3")


def test_hf_dinov3_equals_transformers_forward(tmp_path):
    from transformers import AutoConfig, DINOv3ViTModel

    folder = tiny_dinov3_folder(tmp_path)
    teacher = create_teacher(f"hf:{folder}")
    assert (teacher.spec.family, teacher.spec.patch, teacher.spec.input_size) == ("dinov3", 16, 64)
    with seeded_init():
        model = DINOv3ViTModel(AutoConfig.from_pretrained(folder)).eval()
    x = _images(64, 96)
    with torch.no_grad():
        ref = model(pixel_values=x)
    out = teacher(x)
    assert torch.equal(out.summary, ref.pooler_output)
    assert torch.equal(out.features, ref.last_hidden_state[:, 5:].reshape(2, 4, 6, 32))


def test_hf_sam3_features_are_the_vision_encoder_before_the_neck(tmp_path):
    from transformers import AutoConfig
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig
    from transformers.models.sam3.modeling_sam3 import Sam3VisionModel

    folder = tiny_sam3_folder(tmp_path)
    teacher = create_teacher(f"hf:{folder}")
    spec = teacher.spec
    assert (spec.family, spec.canvas, spec.input_size, spec.patch, spec.summary_dim) == ("sam3", True, 224, 14, None)
    vision = Sam3VisionModel(
        Sam3VisionConfig(
            backbone_config=AutoConfig.from_pretrained(folder).to_dict(),
            fpn_hidden_size=16,
            backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
        )
    ).eval()
    vision.backbone.load_state_dict(teacher.model.state_dict(), strict=True)
    x = _images(224, 224)
    with torch.no_grad():
        ref = vision(pixel_values=x)
    out = teacher(x)
    assert out.summary is None
    assert torch.equal(out.features, ref.last_hidden_state.reshape(2, 16, 16, 32))
    with pytest.raises(TeacherError, match="canvas"):
        teacher(_images(112, 112))


def test_hf_unmappable_model_type_is_one_line(tmp_path):
    from transformers import BertConfig

    folder = _save(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2), tmp_path, "bert")
    with pytest.raises(TeacherError) as info:
        get_spec(f"hf:{folder}")
    assert str(info.value) == (
        f"hf:{folder}: cannot map outputs of model_type 'bert': no summary/features rule "
        "(mappable: dinov3_vit, sam3, sam3_vision_model, sam3_vit_model)"
    )


# --- names that cannot resolve ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:no_such_model", "unknown teacher 'timm:no_such_model': timm has no model 'no_such_model'"),
        ("open_clip:no_such_model", "unknown teacher 'open_clip:no_such_model': open_clip has no model config"),
        ("timm:resnet18", "timm:resnet18: cannot map outputs: timm cannot build it as a ViT"),
        ("radio_no_such_pkg.mod:build", "unknown teacher 'radio_no_such_pkg.mod:build': no library prefix"),
        ("hf:/no/such/folder", "unknown teacher 'hf:/no/such/folder': no such folder /no/such/folder"),
        ("json:no_builder", "teacher 'json:no_builder': module 'json' has no function 'no_builder'"),
    ],
)
def test_unresolvable_names_are_one_line(name, message):
    with pytest.raises(TeacherError) as info:
        get_spec(name)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --- module:builder -----------------------------------------------------------------------------

BUILDER_MODULE = textwrap.dedent(
    '''
    """A user's own teacher: a builder returning a radio Teacher (here, DINOv3 tiny's timm ViT)."""
    from radio.featurize.teachers import TeacherSpec
    from radio.featurize.teachers.timm_family import DINOV3_ARCHS, TimmTeacher

    SPEC = TeacherSpec(
        name="my_teacher", family="mine", input_size=128, patch=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        summary_dim=48, feature_dim=48, licence="cc-by-4.0",
    )

    def build(weights):
        return TimmTeacher(SPEC, DINOV3_ARCHS["dinov3_tiny"].create())
    '''
)


def test_module_builder_teacher_without_installation(tmp_path, monkeypatch):
    (tmp_path / "my_teachers.py").write_text(BUILDER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "my_teachers:build"
    spec = get_spec(name)
    assert (spec.name, spec.family, spec.feature_dim, spec.licence) == (name, "mine", 48, "cc-by-4.0")
    teacher = create_teacher(name)
    assert teacher.spec == spec
    out = teacher(_images(128, 128))
    assert out.features.shape == (2, 8, 8, 48) and out.summary.shape == (2, 48)
    # random init comes from the registry's fixed seed: same weights as the registered tiny DINOv3
    assert torch.equal(out.features, create_teacher("dinov3_tiny")(_images(128, 128)).features)


def test_hf_weights_load_from_a_saved_model_folder(tmp_path):
    """A saved SAM3 vision model (backbone + neck): the backbone's keys load, and the teacher's
    features are that model's own pre-neck output."""
    from transformers import AutoConfig
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig
    from transformers.models.sam3.modeling_sam3 import Sam3VisionModel

    backbone = AutoConfig.from_pretrained(tiny_sam3_folder(tmp_path)).to_dict()
    vision = Sam3VisionModel(
        Sam3VisionConfig(
            backbone_config=backbone, fpn_hidden_size=16, backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]]
        )
    ).eval()
    folder = tmp_path / "saved"
    vision.save_pretrained(folder)
    teacher = create_teacher(f"hf:{folder}", str(folder))
    assert teacher.spec.family == "sam3"
    x = _images(224, 224)
    with torch.no_grad():
        ref = vision(pixel_values=x).last_hidden_state
    assert torch.equal(teacher(x).features, ref.reshape(2, 16, 16, 32))
