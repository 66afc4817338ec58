"""Typed provenance opens stores written before it existed (tests/golden/store_before_i22: the
`tiny` pipeline featurized on 4 sample photos, PHI-S fitted for clip, clip@112 compacted; only
its zarr.json files and manifests are kept)."""

from __future__ import annotations

import dataclasses

import pytest

from radio.config import load_pipeline
from radio.featurize.job import provenance, select
from radio.store import compact
from radio.store.layout import FeatureStore
from radio.store.normalizers import normalizer_info, provenance_fingerprint
from radio.store.provenance import TargetProvenance

GOLDEN = "tests/golden/store_before_i22"

# provenance_fingerprint of every key, as the code before typed provenance computed it.
FINGERPRINTS = {
    "clip@112": "7496acb2a4d9c866",
    "clip@168": "ddde6f45c26160ae",
    "dinov2@112": "f4925c1a96937cd6",
    "dinov2@168": "be77cc17dbd5d221",
    "sam@128": "14b601a6b5b334dc",
    "sam@192": "2f657c7a7f6f7089",
    "sam@256": "570a666a975e2a41",
    "sam@64": "4d2fff464f975b7a",
    "siglip@112": "db7ea7adc0999ec0",
    "siglip@168": "ddc339d70a54b06d",
}


@pytest.fixture()
def golden(repo) -> FeatureStore:
    return FeatureStore(repo / GOLDEN)


def test_a_store_written_before_opens_with_typed_provenance(golden):
    assert golden.target("sam@64").provenance == TargetProvenance(
        target_key="sam@64",
        teacher="sam",
        model="sam_tiny",
        family="sam",
        weights="random-init",
        resolution=64,
        input_size=256,
        patch=16,
        mosaic=4,
        grid=(4, 4),
        feature_dim=32,
        summary_dim=None,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.22399999999999998, 0.225),
        output_scale=1.0,
        code_version="radio-featurize/1",
    )
    clip = golden.target("clip@112").provenance
    assert (clip.mosaic, clip.grid, clip.input_size, clip.feature_dim, clip.summary_dim) == (None, (8, 8), 112, 64, 32)
    assert clip.compact == {"codec": "int8", "rank": None, "clip": 4.0, "summary": False, "normalizer_tars": 2}
    assert golden.target("clip@168").provenance.compact is None


def test_fingerprints_and_json_are_todays(golden):
    assert golden.target_keys == sorted(FINGERPRINTS)
    for key, fp in FINGERPRINTS.items():
        prov = golden.target(key).provenance
        assert provenance_fingerprint(golden, key) == fp and prov.fingerprint() == fp
        # an export's provenance entry (and `store info --json`) is the key's attributes, in their order
        assert list(prov.to_json().items()) == list(golden.target(key).attrs.items())
        assert TargetProvenance.from_json(prov.to_json()) == prov
    # the normalizer fitted before recorded these fingerprints: it still counts as fitted on its keys
    recorded = normalizer_info(golden, "clip", "features")["provenance"]
    assert recorded == {k: FINGERPRINTS[k] for k in ("clip@112", "clip@168")}
    assert compact.fitted_on_key(golden, "clip@112") is True


def test_compact_is_not_part_of_what_a_key_is(golden):
    clip = golden.target("clip@112").provenance
    plain = dataclasses.replace(clip, compact=None)
    assert plain == clip and plain.fingerprint() == clip.fingerprint() and "compact" not in plain.to_json()
    assert dataclasses.replace(clip, mosaic=2) != clip


def test_featurize_writes_the_same_provenance(golden, repo, tmp_path):
    paths = {"data": str(tmp_path / "*.tar"), "store": str(tmp_path / "s"), "out": str(tmp_path / "run")}
    config = load_pipeline(repo / "pipelines.yaml", "tiny", **paths)
    selection = select(config)
    written = {job.key: provenance(config, t, job) for t, (_, _, jobs) in selection.teachers.items() for job in jobs}
    assert sorted(written) == golden.target_keys
    for key, prov in written.items():
        stored = golden.target(key).provenance
        assert prov == stored and prov.to_json() == dataclasses.replace(stored, compact=None).to_json()
