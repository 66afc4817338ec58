"""pipelines.yaml: the shipped file is valid; every class of mistake is one line naming the field, exit 2."""

from __future__ import annotations

import copy

import pydantic
import pytest
import yaml
from typer.testing import CliRunner

from radio.cli.main import app
from radio.config import ConfigError, load_pipeline, read_pipelines

runner = CliRunner()


@pytest.fixture(scope="module")
def raw(repo) -> dict:
    return yaml.safe_load((repo / "pipelines.yaml").read_text())


def test_shipped_file_has_every_named_pipeline(repo):
    pipelines = read_pipelines(repo / "pipelines.yaml")
    assert pipelines.default == "tiny"
    assert set(pipelines.pipelines) == {
        "tiny",
        "radio-amp-b",
        "radio-amp-l",
        "radio-amp-h",
        "radio-amp-g",
        "c-radio-v4-so400m",
        "c-radio-v4-h",
    }
    amp = pipelines.pipelines["radio-amp-h"]
    assert amp.student.size == "h"
    assert [tuple(p.resolution for p in s.partitions) for s in amp.stages] == [(256,), (432,), (432, 1024)]
    assert amp.target("sam_h@256")[2].mosaic == 4
    assert amp.target("sam_h@432")[2].mosaic == 2


def test_config_is_frozen(repo):
    config = load_pipeline(repo / "pipelines.yaml")
    with pytest.raises(pydantic.ValidationError):  # frozen model
        config.out = "elsewhere"  # type: ignore[misc]


def test_overrides_replace_paths(repo):
    config = load_pipeline(repo / "pipelines.yaml", "tiny", data="a/*.tar,b.tar", store="s.zarr", out="runs/x")
    assert config.data.shards == ("a/*.tar", "b.tar")
    assert config.store.path == "s.zarr"
    assert config.out == "runs/x"


def _validate(tmp_path, raw: dict, *extra: str):
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return runner.invoke(app, ["config", "validate", "--config", str(path), *extra])


def _tiny(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    raw["pipelines"] = {"tiny": raw["pipelines"]["tiny"]}
    return {k: v for k, v in raw.items() if not k.startswith("x-")}


def test_valid_file_exits_zero(tmp_path, raw):
    result = _validate(tmp_path, _tiny(raw))
    assert result.exit_code == 0, result.output
    assert "ok: 1 pipelines (tiny)" in result.output


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t: t["student"].update(sise="b"),
            "pipelines.tiny.student.sise: Extra inputs are not permitted",
        ),
        (
            lambda t: t["featurize"].update(batch_size="eight"),
            "pipelines.tiny.featurize.batch_size: Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            lambda t: t["stages"][0]["partitions"][0]["targets"].append("dino@999"),
            "pipelines.tiny: stages.0.partitions.0.targets: 'dino@999' is produced by no teacher (known: "
            "clip@112, clip@168, dinov2@112, dinov2@168, sam@128, sam@192, sam@256, sam@64, siglip@112, siglip@168)",
        ),
        (
            lambda t: t["stages"][1]["partitions"][0].update(resolution=200),
            "pipelines.tiny.stages.1.partitions.0.resolution: resolution 200 is not a positive multiple of 16",
        ),
        (
            lambda t: t["teachers"]["sam"]["targets"].update(
                {"sam@144": {"resolution": 144, "mosaic": 2, "canvas": 256}}
            ),
            "pipelines.tiny.teachers.sam.targets.sam@144: mosaic 2 tiles are 128 px and cannot hold resolution 144",
        ),
        (
            lambda t: t["teachers"]["sam"]["targets"].update(
                {"sam@100": {"resolution": 100, "mosaic": 1, "canvas": 256}}
            ),
            "pipelines.tiny.teachers.sam.targets.sam@100: resolution 100 is not a positive multiple of 16",
        ),
        (
            lambda t: t["teachers"]["clip"]["targets"].update({"clip@140": {"resolution": 112}}),
            "pipelines.tiny.teachers.clip.targets: target key 'clip@140' names resolution 140 but sets 112",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unknown-target-key",
        "resolution-not-16",
        "mosaic-too-small",
        "mosaic-resolution-not-16",
        "key-resolution-mismatch",
    ],
)
def test_each_config_error_is_one_line_exit_2(tmp_path, raw, mutate, message):
    bad = _tiny(raw)
    mutate(bad["pipelines"]["tiny"])
    result = _validate(tmp_path, bad)
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err == f"error: {tmp_path / 'pipelines.yaml'}: {message}"
    assert "\n" not in err and "Traceback" not in result.output


def test_unknown_pipeline_and_missing_file(tmp_path, raw):
    result = _validate(tmp_path, _tiny(raw), "--pipeline", "huge")
    assert result.exit_code == 2
    assert "no pipeline 'huge' (known: tiny)" in result.stderr
    result = runner.invoke(app, ["config", "show", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: no such config file (pass --config PATH)"


def test_bad_override_names_the_field(repo):
    with pytest.raises(ConfigError, match=r"data.shards: Tuple should have at least 1 item"):
        load_pipeline(repo / "pipelines.yaml", data=",")


def test_show_prints_resolved_yaml(repo):
    result = runner.invoke(app, ["config", "show", "--config", str(repo / "pipelines.yaml"), "--store", "x.zarr"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["store"]["path"] == "x.zarr"
    assert shown["store"]["shard_rows"] == 8  # from the file
    assert shown["featurize"]["crop"]["kind"] == "random_resized"  # a default filled in from code
