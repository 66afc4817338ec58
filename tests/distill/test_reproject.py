"""Re-projection (issue 23): a head exact in one normalizer's space stays exact, in the teacher's
space, after a refit moves the target space; without re-projection it does not."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from radio.distill.adaptors import AdaptorMLP
from radio.distill.reproject import reproject_head
from radio.distill.spaces import TargetSpace, first_change, from_records, records
from radio.store.moments import Moments
from radio.store.normalizers import Normalizer
from radio.store.phis import fit_phis

C, H, D = 24, 48, 32


def _features(rng: np.random.Generator, spread: float, offset: float, n: int = 4000) -> np.ndarray:
    """Teacher features ``[n, C]`` with correlated channels, offset channel means and a spread."""
    mix = rng.normal(size=(C, C)) / np.sqrt(C)
    return (rng.normal(size=(n, C)) * np.linspace(0.2, 3.0, C)) @ mix.T * spread + offset * rng.normal(size=C)


def _normalizers(mode: str) -> tuple[Normalizer, Normalizer]:
    """A stage's normalizer and a refit's: the refit merged a key of twice the spread and other means."""
    rng = np.random.default_rng(0)
    first = _features(rng, 1.0, 0.5)
    refit = np.concatenate([first, _features(np.random.default_rng(1), 2.0, 3.0)])
    old, new = (Normalizer.from_phis(mode, fit_phis(Moments.of(x))) for x in (first, refit))
    return old, new


def _head_and_inputs() -> tuple[AdaptorMLP, torch.Tensor]:
    torch.manual_seed(0)
    head = AdaptorMLP(D, H, C, inner=1)
    with torch.no_grad():
        head.fc2.weight.normal_(0, 0.3)  # predictions of unit scale in the normalized space
        head.fc2.bias.normal_(0, 0.3)
    return head, torch.randn(256, D)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("old_mode", "new_mode"), [("phis", "phis"), ("standardize", "standardize"), ("phis", "standardize")]
)
def test_a_head_exact_in_the_old_space_stays_exact_after_a_refit_only_when_reprojected(old_mode, new_mode):
    old, _ = _normalizers(old_mode)
    _, new = _normalizers(new_mode)
    head, h = _head_and_inputs()
    with torch.no_grad():
        teacher = old.denormalize(head(h).double())  # the targets the head fits exactly, in teacher space
        target_new = new.normalize(teacher)  # what the loss compares with after the refit
        silent = head(h).double()
        # Today's silent path: the old head, read in the new space, is far off in both spaces.
        assert _relative(new.denormalize(silent), teacher) > 0.3
        mse_silent = float(((silent - target_new) ** 2).mean())
        assert mse_silent > 0.3 * float(target_new.var())
        reproject_head(head, TargetSpace.of(old, "a" * 16), TargetSpace.of(new, "b" * 16))
        moved = head(h).double()
        # Re-projected: the same predictions in teacher space to float32 precision, and ~0 loss.
        assert _relative(new.denormalize(moved), teacher) < 1e-5
        assert float(((moved - target_new) ** 2).mean()) < 1e-9 * float(target_new.var())


def test_from_none_to_phis_and_the_summary_of_a_head_is_the_last_linear_only():
    _, new = _normalizers("phis")
    none = Normalizer("none", np.zeros(C))
    head, h = _head_and_inputs()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        teacher = head(h).double()
        reproject_head(head, TargetSpace.of(none, None), TargetSpace.of(new, "b" * 16))
        assert _relative(new.denormalize(head(h).double()), teacher) < 1e-5
    changed = {k for k, v in head.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc2.weight", "fc2.bias"}


def test_spaces_travel_in_a_weights_only_checkpoint_and_name_the_first_change():
    old, new = _normalizers("phis")
    spaces = {"clip": TargetSpace.of(old, "a" * 16), "sam": TargetSpace.of(new, "c" * 16)}
    buf = io.BytesIO()
    torch.save({"normalizers": records(spaces)}, buf)
    buf.seek(0)
    back = from_records(torch.load(buf, weights_only=True)["normalizers"])
    assert back is not None and set(back) == {"clip", "sam"}
    assert torch.equal(back["clip"].matrix, spaces["clip"].matrix) and back["clip"].fingerprint == "a" * 16
    assert first_change(back, spaces) is None
    now = spaces | {"clip": TargetSpace.of(new, "b" * 16)}
    teacher, was, is_ = first_change(back, now) or ("", None, None)
    assert (teacher, was.label, is_.label) == ("clip", "a" * 16, "b" * 16)
    assert TargetSpace.of(Normalizer.from_phis("standardize", fit_phis(Moments.of(np.eye(C)))), "f" * 16).label == (
        "standardize " + "f" * 16
    )
    assert from_records(None) is None
