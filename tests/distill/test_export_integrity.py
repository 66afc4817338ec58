"""`radio export` records the sha256 of its weights and a copy of its config inside them;
`radio.load` of a damaged export folder is one `ExportError` line naming the field or tensor."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import radio
from radio.cli.main import app
from radio.distill.adaptors import AdaptorSpec
from radio.distill.checkpoint import save_weights, weights_bytes
from radio.distill.export import EXPORT_FORMAT, ExportError, write_export
from radio.distill.export_integrity import META_KEY
from radio.distill.final_weights import final_metadata
from radio.distill.student import Student
from radio.errors import RadioError
from radio.store.normalizers import Normalizer

ARCH = {
    "size": "tiny",
    "patch": 16,
    "cpe_max_size": 256,
    "register_multiple": 8,
    "adaptor_hidden": 16,
    "adaptor_inner": 0,
}
TEACHERS = [
    {
        "name": "clip",
        "summary_dim": 16,
        "feature_dim": 16,
        "target_key": "clip@112",
        "normalization": "phis",
        "normalizer": {"keys": ["clip@112"], "fingerprint": "f00d"},
    },
    {"name": "sam", "summary_dim": None, "feature_dim": 8, "target_key": "sam@128", "normalization": "phis"},
]
META = {"format": EXPORT_FORMAT, "student": ARCH, "teachers": TEACHERS, "stage": 1, "input": "RGB in [0, 1]"}


def _tensors() -> dict[str, torch.Tensor]:
    """A random-init tiny student and clip's PHI-S normalizer, named as an export names them."""
    torch.manual_seed(0)
    student = Student(
        "tiny",
        [AdaptorSpec("clip", 16, 16), AdaptorSpec("sam", None, 8)],
        cpe_max_size=256,
        register_multiple=8,
        adaptor_hidden=16,
    )
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    norm = Normalizer("phis", rng.normal(size=16), q * 0.5, q.T * 2.0, np.ones(16))
    return {f"student.{k}": v for k, v in student.state_dict().items()} | {
        f"normalizers.clip.{k}": v for k, v in norm.state_dict().items()
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "good"
    write_export(out, _tensors(), META)
    return out


def _write_pair(folder: Path, tensors: dict[str, torch.Tensor], meta: dict, embed: bool = True) -> None:
    """An export folder whose sha256 and embedded copy agree with ``meta``, written past
    write_export's own checks (as a buggy or foreign writer would)."""
    described = {k: v for k, v in meta.items() if k != "weights"}
    data = weights_bytes(tensors, {"format": EXPORT_FORMAT} | ({META_KEY: json.dumps(described)} if embed else {}))
    (folder / "model.safetensors").write_bytes(data)
    config = described | {"weights": {"file": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest()}}
    (folder / "config.json").write_text(json.dumps(config))


def _edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Damage: change config.json's parsed content (the weights stay as they are)."""

    def damage(folder: Path) -> None:
        meta = json.loads((folder / "config.json").read_text())
        change(meta)
        (folder / "config.json").write_text(json.dumps(meta))

    return damage


def _consistent(
    change_tensors: Callable[[dict], None] | None = None,
    change_meta: Callable[[dict], None] | None = None,
    embed: bool = True,
) -> Callable[[Path], None]:
    """Damage: a pair written consistently (sha256 and embedded copy match) with other tensors or config."""

    def damage(folder: Path) -> None:
        tensors, meta = _tensors(), json.loads((folder / "config.json").read_text())
        if change_tensors:
            change_tensors(tensors)
        if change_meta:
            change_meta(meta)
        _write_pair(folder, tensors, meta, embed)

    return damage


def _nan(tensors: dict) -> None:
    tensors["student.blocks.0.attn.qkv.weight"][0, 0] = float("nan")


def _set(path: str, value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return change


def _drop(path: str) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]

    return change


def _flip_last_byte(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


C, W = "{p}/config.json", "{p}/model.safetensors"
OTHER_SHA = "0" * 64
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "no config.json": (
        lambda f: (f / "config.json").unlink(),
        "{p}: not a radio export (needs config.json and model.safetensors)",
    ),
    "no model.safetensors": (
        lambda f: (f / "model.safetensors").unlink(),
        "{p}: not a radio export (needs config.json and model.safetensors)",
    ),
    "config.json not JSON": (
        lambda f: (f / "config.json").write_text("hello"),
        f"{C}: not JSON (line 1 column 1: Expecting value)",
    ),
    "config.json truncated": (
        lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:1]),
        f"{C}: not JSON (line 1 column 2: Expecting property name enclosed in double quotes)",
    ),
    "config.json not UTF-8": (
        lambda f: (f / "config.json").write_bytes(b'{"format": "\xff"}'),
        f"{C}: not JSON (not UTF-8)",
    ),
    "config.json a list": (lambda f: (f / "config.json").write_text("[1, 2]"), f"{C}: not a JSON object"),
    "no format": (
        _edit(_drop("format")),
        f"{C}: export format None, this version reads '{EXPORT_FORMAT}' (re-run `radio export` with this version)",
    ),
    "unknown format version": (
        _edit(_set("format", "radio-export/9")),
        f"{C}: export format 'radio-export/9', this version reads '{EXPORT_FORMAT}' "
        "(re-run `radio export` with this version)",
    ),
    "no student": (_edit(_drop("student")), f"{C}: missing field student"),
    "student a string": (_edit(_set("student", "tiny")), f'{C}: field student must be an object, got "tiny"'),
    "no student.size": (_edit(_drop("student.size")), f"{C}: missing field student.size"),
    "student.cpe_max_size a string": (
        _edit(_set("student.cpe_max_size", "256")),
        f'{C}: field student.cpe_max_size must be an integer, got "256"',
    ),
    "student.adaptor_hidden a bool": (
        _edit(_set("student.adaptor_hidden", True)),
        f"{C}: field student.adaptor_hidden must be an integer, got true",
    ),
    "no teachers": (_edit(_drop("teachers")), f"{C}: missing field teachers"),
    "teachers empty": (_edit(_set("teachers", [])), f"{C}: field teachers must be a non-empty list, got []"),
    "a teacher not an object": (
        _edit(_set("teachers.1", "sam")),
        f'{C}: field teachers[1] must be an object, got "sam"',
    ),
    "no teachers[0].feature_dim": (
        _edit(_drop("teachers.0.feature_dim")),
        f"{C}: missing field teachers[0].feature_dim",
    ),
    "teachers[0].summary_dim a float": (
        _edit(_set("teachers.0.summary_dim", 1.5)),
        f"{C}: field teachers[0].summary_dim must be an integer or null, got 1.5",
    ),
    "teachers[1].name empty": (
        _edit(_set("teachers.1.name", "")),
        f'{C}: field teachers[1].name must be a non-empty string, got ""',
    ),
    "teacher names repeat": (
        _edit(_set("teachers.1.name", "clip")),
        f"{C}: field teachers: teacher names repeat (clip, clip)",
    ),
    "no weights": (_edit(_drop("weights")), f"{C}: missing field weights"),
    "no weights.sha256": (_edit(_drop("weights.sha256")), f"{C}: missing field weights.sha256"),
    "weights.sha256 not hex": (
        _edit(_set("weights.sha256", "xyz")),
        f'{C}: field weights.sha256 must be 64 lowercase hex digits, got "xyz"',
    ),
    "wrong sha256": (
        _edit(_set("weights.sha256", OTHER_SHA)),
        f"{W}: sha256 {{sha}} != {OTHER_SHA} recorded in config.json (the file is damaged or was replaced)",
    ),
    "model.safetensors truncated": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
        f"{W}: not a safetensors file (incomplete metadata, file not fully covered)",
    ),
    "model.safetensors random bytes": (
        lambda f: (f / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000)),
        f"{W}: not a safetensors file (header too large)",
    ),
    "model.safetensors one byte flipped": (
        lambda f: (f / "model.safetensors").write_bytes(_flip_last_byte((f / "model.safetensors").read_bytes())),
        f"{W}: sha256 {{sha}} != {{recorded}} recorded in config.json (the file is damaged or was replaced)",
    ),
    "normalization edited": (
        _edit(_set("teachers.0.normalization", "standardize")),
        f'{C}: field teachers[0].normalization is "standardize", but the export was written with '
        '"phis" (config.json was edited)',
    ),
    "normalizer fingerprint edited": (
        _edit(_set("teachers.0.normalizer.fingerprint", "beef")),
        f'{C}: field teachers[0].normalizer.fingerprint is "beef", but the export was '
        'written with "f00d" (config.json was edited)',
    ),
    "a field added": (
        _edit(_set("student.depth", 3)),
        f"{C}: field student.depth is 3, but the export was written with null (config.json was edited)",
    ),
    "no embedded config": (
        _consistent(embed=False),
        f"{W}: no copy of config.json in its metadata (not written by `radio export`)",
    ),
    "unknown student size": (
        _consistent(change_meta=_set("student.size", "zz")),
        f"{C}: field student.size 'zz' is not a student size (tiny, b, so400m, l, h, g)",
    ),
    "unknown normalization": (
        _consistent(change_meta=_set("teachers.0.normalization", "whiten")),
        f"{C}: field teachers[0].normalization 'whiten' is not one of phis, standardize, none",
    ),
    "missing tensor": (
        _consistent(lambda t: t.pop("student.patch_embed.weight")),
        f"{W}: missing tensor student.patch_embed.weight (shape [64, 3, 16, 16])",
    ),
    "missing normalizer tensor": (
        _consistent(lambda t: t.pop("normalizers.clip.inverse")),
        f"{W}: missing tensor normalizers.clip.inverse (shape [16, 16])",
    ),
    "extra tensor": (
        _consistent(lambda t: t.update({"student.extra": torch.zeros(2)})),
        f"{W}: unexpected tensor student.extra",
    ),
    "misshaped tensor": (
        _consistent(lambda t: t.update({"normalizers.clip.mean": torch.zeros(15, dtype=torch.float64)})),
        f"{W}: tensor normalizers.clip.mean has shape [15], the config says [16]",
    ),
    "feature_dim edited consistently": (
        _consistent(change_meta=_set("teachers.0.feature_dim", 32)),
        f"{W}: tensor student.adaptors.clip.features.fc2.weight has shape [16, 16], the config says [32, 16]",
    ),
    "NaN weights": (_consistent(_nan), f"{W}: tensor student.blocks.0.attn.qkv.weight is not finite (NaN or inf)"),
}


def test_the_good_export_loads_and_records_its_sha256(good):
    meta = json.loads((good / "config.json").read_text())
    assert meta["weights"] == {
        "file": "model.safetensors",
        "sha256": hashlib.sha256((good / "model.safetensors").read_bytes()).hexdigest(),
    }
    model = radio.load(good)
    assert set(model.normalizers) == {"clip"}
    assert model(torch.rand(1, 3, 32, 32)).adaptors["clip"].features.shape == (1, 2, 2, 16)


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_export_is_one_export_error_naming_the_field(good, tmp_path, case):
    folder = tmp_path / "export"
    shutil.copytree(good, folder)
    recorded = json.loads((folder / "config.json").read_text())["weights"]["sha256"]
    damage, expected = CASES[case]
    damage(folder)
    weights = folder / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""
    with pytest.raises(ExportError) as e:
        radio.load(folder)
    assert str(e.value) == expected.format(p=folder, sha=sha, recorded=recorded)
    assert isinstance(e.value, RadioError) and "\n" not in str(e.value)


def test_at_least_19_damage_cases():
    assert len(CASES) >= 19


def _run_with_final(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A run folder whose stage 1 finished with ``tensors`` as its final weights (student + payload)."""
    run = tmp_path / "run"
    meta = {k: v for k, v in META.items() if k not in ("format", "input")}
    student = {k[len("student.") :]: v for k, v in tensors.items() if k.startswith("student.")}
    extra = {f"export.{k}": v for k, v in tensors.items() if k.startswith("normalizers.")}
    save_weights(
        student | extra, run / "stage1" / "final.safetensors", {"stage": "1", "steps": "1"} | final_metadata(meta)
    )
    return run


def test_radio_export_writes_a_pair_radio_load_accepts(tmp_path):
    run = _run_with_final(tmp_path, _tensors())
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    model = radio.load(tmp_path / "out")
    assert torch.equal(model.normalizers["clip"].inverse, _tensors()["normalizers.clip.inverse"])


def test_radio_export_refuses_non_finite_weights_naming_the_tensor(tmp_path):
    tensors = _tensors()
    tensors["normalizers.clip.mean"][3] = float("inf")
    run = _run_with_final(tmp_path, tensors)
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {run / 'stage1' / 'final.safetensors'}: tensor export.normalizers.clip.mean "
        "is not finite (NaN or inf); the run diverged: nothing exported"
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match=r"^tensor student.blocks.0.attn.qkv.weight is not finite \(NaN or inf\); "):
        bad = _tensors()
        _nan(bad)
        write_export(tmp_path / "direct", bad, META)
    assert not (tmp_path / "direct").exists()


def test_a_foreign_safetensors_export_without_radio_metadata_is_refused(tmp_path, good):
    folder = tmp_path / "x"
    shutil.copytree(good, folder)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(ExportError, match=r"model.safetensors: sha256 [0-9a-f]{64} != "):
        radio.load(folder)
