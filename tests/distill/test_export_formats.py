"""`radio export --format hf | timm-naflex | onnx` and `--ema`: each format equals `radio.load`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import radio
from radio.cli.main import app
from radio.distill.adaptors import AdaptorSpec
from radio.distill.checkpoint import save_weights
from radio.distill.final_weights import final_metadata
from radio.distill.student import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Student

TEACHERS = [AdaptorSpec("clip", 16, 16), AdaptorSpec("siglip", 16, 16), AdaptorSpec("sam", None, 16)]
CPE_MAX = 256  # a 16 x 16 grid
ARCH = {"size": "tiny", "patch": 16, "cpe_max_size": CPE_MAX, "register_multiple": 8, "adaptor_hidden": 8}


def _student(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Student("tiny", TEACHERS, cpe_max_size=CPE_MAX, adaptor_hidden=8).state_dict()


def _run(root: Path, ema: bool = False) -> Path:
    """A run folder whose stage 1 finished with a random tiny student (and, with ``ema``, a
    different random student as its EMA weights)."""
    run = root / "run"
    meta = {"student": ARCH, "stage": 1, "teachers": [asdict(t) | {"normalization": "none"} for t in TEACHERS]}
    tensors = _student(0) | ({f"ema.{k}": v for k, v in _student(1).items()} if ema else {})
    save_weights(tensors, run / "stage1" / "final.safetensors", {"stage": "1", "steps": "1"} | final_metadata(meta))
    return run


def _export(run: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


@pytest.fixture(scope="module")
def run_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    run = _run(root)
    _export(run, root / "radio")
    return run, radio.load(root / "radio"), root


def _images(h: int, w: int) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


@pytest.mark.parametrize("size", [(256, 256), (256, 160)])
def test_hf_radio_model_equals_radio_load(run_and_reference, size):
    from transformers import RadioModel

    run, ours, root = run_and_reference
    out = root / "hf"
    if not out.exists():
        line = _export(run, out, "--format", "hf")
        assert line == (
            f"exported to {out}: load with transformers.RadioModel.from_pretrained({str(out)!r}) (RGB in [0, 1]; "
            "backbone only: summary and features, no adaptors; equal to radio.load where the longer side is 256 px)"
        )
    model = RadioModel.from_pretrained(str(out)).eval()
    assert (model.config.num_cls_tokens, model.config.num_registers, model.config.max_img_size) == (2, 6, 256)
    assert model.config.summary_idxs == [0, 1]
    x = _images(*size)
    with torch.inference_mode():
        theirs, expected = model(pixel_values=x), ours(x)
    assert (theirs.summary - expected.summary).abs().max() <= 1e-4
    assert (theirs.features - expected.features.flatten(1, 2)).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(96, 160), (320, 320)])
def test_timm_naflex_equals_radio_load_at_any_size(run_and_reference, size):
    import timm

    from radio.distill.export_naflex import naflex_variant

    run, ours, root = run_and_reference
    out = root / "naflex"
    if not out.exists():
        assert "load with timm.create_model('naflexvit_base_patch16_radio_v3'" in _export(
            run, out, "--format", "timm-naflex"
        )
    name, kwargs = naflex_variant(ours.student)
    assert kwargs["pos_embed_grid_size"] == (16, 16) and kwargs["reg_tokens"] == 7
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "timm_naflex.safetensors")), **kwargs
    ).eval()
    x = _images(*size)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens, expected = model.forward_features((x - mean) / std), ours(x)  # timm takes normalized input
    prefix = model.num_prefix_tokens
    assert prefix == 8  # 2 CLS + 6 registers
    features = tokens[:, prefix:].reshape(expected.features.shape)
    assert (features - expected.features).abs().max() <= 1e-4
    assert (tokens[:, :2].flatten(1) - expected.summary).abs().max() <= 1e-4


def test_onnx_on_cpu_equals_radio_load_at_two_sizes_with_dynamic_height_and_width(run_and_reference):
    import onnx
    import onnxruntime

    run, ours, root = run_and_reference
    out = root / "onnx"
    line = _export(run, out, "--format", "onnx")
    assert line.startswith(f"exported to {out / 'model.onnx'}: load with onnxruntime.InferenceSession(")
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["dynamic_hw"] == "true"
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for h, w in [(64, 64), (96, 160)]:  # neither is the traced example's 32 x 48
        x = _images(h, w)
        summary, features = session.run(None, {"images": x.numpy()})
        expected = ours(x)
        assert features.shape == (2, h // 16, w // 16, 64)
        assert np.abs(summary - expected.summary.numpy()).max() <= 1e-3
        assert np.abs(features - expected.features.numpy()).max() <= 1e-3


def test_ema_exports_the_ema_weights(tmp_path):
    run = _run(tmp_path, ema=True)
    _export(run, tmp_path / "ema", "--ema")
    _export(run, tmp_path / "plain")
    ema, plain = radio.load(tmp_path / "ema").student.state_dict(), radio.load(tmp_path / "plain").student.state_dict()
    assert all(torch.equal(ema[k], v) for k, v in _student(1).items())
    assert all(torch.equal(plain[k], v) for k, v in _student(0).items())


def test_ema_without_ema_weights_is_one_line_and_exit_2(tmp_path):
    run = _run(tmp_path)
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "o"), "--ema"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {run / 'stage1' / 'final.safetensors'}: this run kept no EMA weights (no ema.* tensors); "
        "export without --ema"
    )
    assert not (tmp_path / "o").exists()


def test_unknown_format_is_one_line_naming_the_known_ones(tmp_path):
    run = _run(tmp_path)
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "o"), "--format", "tf"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unknown export format 'tf' (known: radio, timm, timm-naflex, hf, onnx)"


def test_export_help_lists_every_format_and_what_it_drops():
    result = CliRunner().invoke(app, ["export", "--help"], terminal_width=400)
    text = " ".join(result.output.split())
    for fmt in ("radio:", "timm:", "timm-naflex:", "hf:", "onnx:"):
        assert fmt in text
    assert "All but radio drop the adaptors" in text and "--ema" in text
