"""The design card's used-by commands, literally, on the `tiny` pipeline: `radio featurize
--teacher sam --mosaic 4`, `radio featurize`, `radio fit-phis`, `radio distill --stage 3` (after
stages 1 and 2), through the CLI on the session's Ray instance."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from radio.cli.main import app
from radio.shards.sampledata import write_sample_data
from radio.store.layout import FeatureStore


@pytest.mark.slow
@pytest.mark.ray
def test_design_card_commands_run_as_written(repo, tmp_path, ray_session):
    write_sample_data(tmp_path / "shards", images=24, shard_size=12, seed=5)
    common = ["--config", str(repo / "pipelines.yaml"), "--store", str(tmp_path / "store.zarr")]
    runner = CliRunner()

    def radio(*args: str) -> str:
        out = [] if args[0] == "fit-phis" else ["--out", str(tmp_path / "run")]
        result = runner.invoke(app, [*args, *common, *out])
        assert result.exit_code == 0, result.output
        return result.output

    out = radio("featurize", "--teacher", "sam", "--mosaic", "4", "--data", str(tmp_path / "shards"))
    assert "note: --mosaic 4 applies to sam@64;" in out
    store = FeatureStore(tmp_path / "store.zarr")
    assert store.target("sam@64").attrs["mosaic"] == 4 and store.completed("sam@64").all()
    assert store.target_keys == ["sam@128", "sam@192", "sam@256", "sam@64"]  # only SAM so far
    radio("featurize", "--data", str(tmp_path / "shards"))
    store = FeatureStore(tmp_path / "store.zarr")
    assert all(store.completed(k).all() for k in store.target_keys) and len(store.target_keys) == 10
    radio("fit-phis")
    radio("distill", "--stage", "1", "--steps", "2")
    radio("distill", "--stage", "2", "--steps", "2")
    out = radio("distill", "--stage", "3", "--steps", "2")
    assert "stage 3: steps 0→2" in out
    assert (tmp_path / "run" / "stage3" / "final.safetensors").is_file()
