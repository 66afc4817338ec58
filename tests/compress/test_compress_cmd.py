"""`radio compress` on a tiny random-init export: table, safetensors, pictures, error messages."""

from __future__ import annotations

import io

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from radio.cli.compress_cmd import compress

EXPORT_CONFIG = {
    "format": "radio-export/2",
    "student": {"size": "tiny", "patch": 16, "cpe_max_size": 512, "register_multiple": 8, "adaptor_hidden": 64},
    "teachers": [{"name": "dinov2", "summary_dim": 48, "feature_dim": 48, "target_key": None, "normalization": "none"}],
    "stage": 1,
}


@pytest.fixture(scope="module")
def app():
    # The command on its own app (`radio compress` is registered in cli/main.py).
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.callback()(lambda: None)
    app.command("compress")(compress)
    return app


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An export folder as `radio export` writes it, from an untrained tiny student."""
    import torch

    from radio.distill.adaptors import AdaptorSpec
    from radio.distill.export import write_export
    from radio.distill.student import Student

    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    student = Student("tiny", [AdaptorSpec("dinov2", 48, 48)], cpe_max_size=512, register_multiple=8, adaptor_hidden=64)
    write_export(out, {f"student.{k}": v for k, v in student.state_dict().items()}, EXPORT_CONFIG)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image
    from skimage import color, data

    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray((color.gray2rgb(data.page())).astype(np.uint8)).save(folder / "page.jpg")
    return folder


def test_the_export_loads(export):
    import torch

    import radio

    out = radio.load(export)(torch.rand(1, 3, 64, 96))
    assert out.features.shape == (1, 4, 6, 64)


def test_compress_two_images(app, export, images, tmp_path):
    from PIL import Image
    from safetensors import safe_open

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "compress",
            "--model",
            str(export),
            "--images",
            str(images),
            "--tokens",
            "50",
            "--resolution",
            "160",
            "--out",
            str(out),
            "--picture",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = {
        name: next(line for line in lines if line.lstrip("│ ").startswith(name))
        for name in ("ToMe strided", "ToMe random dest", "avg pool", "pixel unshuffle")
    }
    assert "astronaut" in result.stdout and "page" in result.stdout  # a column per image
    tome = rows["ToMe strided"].split("│")
    assert tome[2].strip() == "50" and tome[3].strip() == "64"  # tokens, channels
    assert 0 < float(tome[6]) < 1  # mean relative MSE
    # 10x10 → 50: 2x2 windows give 25 destinations ≤ 50: one round
    assert tome[10].strip() == "1" and "2x2 windows, 100 → 50" in tome[11]
    assert [c.strip() for c in rows["pixel unshuffle"].split("│")[2:4]] == ["25", "256"]
    assert "lossless" in rows["pixel unshuffle"]
    assert "7x7 grid" in rows["avg pool"]  # 49 ≤ 50 tokens
    for name in ("astronaut", "page"):
        with safe_open(str(out / f"{name}.safetensors"), "pt") as f:
            assert f.get_tensor("tokens").shape == (50, 64)
            assert int(f.get_tensor("sizes").sum()) == 100
            group = f.get_tensor("group")
            assert group.shape == (100,) and str(group.dtype) == "torch.int64" and int(group.max()) == 49
            assert f.metadata()["grid"] == "10x10"
        with Image.open(io.BytesIO((out / f"{name}.png").read_bytes())) as png:
            assert png.size[0] > 0 and png.size == (3 * 160 + 16, 160)


def test_one_round_picks_coarser_windows_and_the_table_reports_rounds(app, export, images):
    def tome_row(*extra: str) -> list[str]:
        result = CliRunner().invoke(
            app,
            [
                "compress",
                "--model",
                str(export),
                "--images",
                str(images),
                "--tokens",
                "10",
                "--resolution",
                "160",
                *extra,
            ],
            terminal_width=200,
        )
        assert result.exit_code == 0, result.output
        return next(line for line in result.stdout.splitlines() if line.lstrip("│ ").startswith("ToMe strided")).split(
            "│"
        )

    # 10x10 → 10: 2x2 windows (25 destinations) need two rounds; 3x3 windows (9 ≤ 10) need one.
    default, one = tome_row(), tome_row("--one-round")
    assert default[10].strip() == "2" and "2x2 windows, 100 → 25 → 10" in default[11]
    assert one[10].strip() == "1" and "3x3 windows, 100 → 10" in one[11]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--tokens", "100", "--resolution", "160"],
            "error: --tokens 100 must be smaller than the 100 tokens of the 10x10 grid at --resolution 160",
        ),
        (["--resolution", "150"], "error: --resolution 150 is not a multiple of 16"),
        (["--picture"], "error: --picture needs --out (the folder to write the PNGs into)"),
    ],
)
def test_bad_arguments_are_one_line_errors(app, export, images, args, message):
    result = CliRunner().invoke(app, ["compress", "--model", str(export), "--images", str(images), *args])
    assert result.exit_code == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""


def test_unreadable_and_missing_images(app, export, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(
        app, ["compress", "--model", str(export), "--images", str(bad), "--resolution", "160", "--tokens", "50"]
    )
    assert result.exit_code == 2
    assert (
        result.stderr.startswith(f"error: cannot read image {bad}: ") and len(result.stderr.strip().splitlines()) == 1
    )
    result = CliRunner().invoke(app, ["compress", "--model", str(export), "--images", str(tmp_path / "nope.png")])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope.png'}: no such file or folder"
    result = CliRunner().invoke(app, ["compress", "--model", str(tmp_path), "--images", str(bad)])
    assert result.exit_code == 2 and "not a radio export" in result.stderr
