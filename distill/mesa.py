"""MESA: an exponential moving average (EMA) of the student's weights, run as an extra teacher.

C-RADIOv4 (arXiv 2601.17237; NVlabs/RADIO#181) keeps an EMA of the student for all of training
(decay 0.9996) and adds a loss between the student's and the EMA student's outputs on the same
batch. MESA (Du et al., "Sharpness-Aware Training for Free", 2022) takes that loss on the
model's outputs; a RADIO student's outputs are its adaptor heads, whose features already live in
the target (PHI-S) space, so the default compares every head's patch features by MSE there: the
scale the teachers' feature losses have, so weight 1 weighs like one more teacher. The heads'
summaries (cosine) and the backbone's patch tokens (MSE, no fixed scale: the student has no final
norm) are options.

- The EMA is a float32 copy of the student (parameters and floating buffers; other buffers are
  copied), updated after every optimizer step from step 0: ``ema = d·ema + (1 − d)·w``. Before
  ``start_step`` only the update runs (no extra forward, the loss entries are 0).
- The EMA forward sees exactly the student's input: the same images (crops, flips, windows) and
  the same CPE crops, in training mode, without gradients.
- Under DDP every rank updates its own EMA from the same post-step weights, so the copies stay
  equal without communication.
- The EMA is checkpointed (``state_dict``) and written into the final weights as ``ema.<key>``
  (:data:`~radio.distill.final_weights.EMA_PREFIX`), which `radio export --ema` reads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from radio.config.schema import MesaConfig

from .final_weights import EMA_PREFIX
from .loss import KeyTarget, cosine_distance
from .student import Student

MESA = "mesa"  # loss names: "mesa:RES:HEAD/features", "mesa:RES:HEAD/summary", "mesa:RES/backbone"


def ema_step(ema: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], decay: float) -> None:
    """In place, ``ema[i] = decay·ema[i] + (1 − decay)·weights[i]`` (float32 ``ema``; ``weights`` of
    any float dtype, cast first). One fused pass over all tensors (``torch._foreach_*``)."""
    if not ema:
        return
    w = [t.detach().to(e.dtype) for e, t in zip(ema, weights)]
    torch._foreach_mul_(list(ema), decay)
    torch._foreach_add_(list(ema), w, alpha=1.0 - decay)


class Mesa:
    """The EMA student of one stage and its loss. ``student``: the trained model (already on its
    device, with its initial or resumed weights: the EMA starts equal to it)."""

    def __init__(self, student: Student, cfg: MesaConfig):
        self.cfg = cfg
        self.ema = copy.deepcopy(student).float().requires_grad_(False)
        self.ema.train()  # the same CPE-crop path as the student; the crops are passed in
        self._pairs = self._tensor_pairs(student)

    def _tensor_pairs(self, student: Student) -> tuple[list[torch.Tensor], ...]:
        """(EMA tensors, student tensors) to average, and (EMA, student) buffers to copy."""
        own = dict(student.named_parameters()) | dict(student.named_buffers())
        avg_e: list[torch.Tensor] = []
        avg_s: list[torch.Tensor] = []
        copy_e: list[torch.Tensor] = []
        copy_s: list[torch.Tensor] = []
        for name, e in list(self.ema.named_parameters()) + list(self.ema.named_buffers()):
            s = own[name]
            (avg_e if e.is_floating_point() else copy_e).append(e)
            (avg_s if e.is_floating_point() else copy_s).append(s)
        return avg_e, avg_s, copy_e, copy_s

    def active(self, step: int) -> bool:
        """Whether step ``step`` (0-based: the step being computed) adds the MESA loss."""
        return step >= self.cfg.start_step

    @torch.no_grad()
    def update(self) -> None:
        """Fold the student's current weights into the EMA: call after each optimizer step."""
        avg_e, avg_s, copy_e, copy_s = self._pairs
        ema_step(avg_e, avg_s, self.cfg.decay)
        for e, s in zip(copy_e, copy_s):
            e.copy_(s)

    def add_to(
        self,
        out: dict[str, torch.Tensor],
        step: int,
        outputs: list,
        images: list[torch.Tensor],
        crops: list[torch.Tensor],
        partitions: list[tuple[int, list[KeyTarget]]],
        partition_weights: Sequence[float],
    ) -> dict[str, torch.Tensor]:
        """``out`` (the distillation losses) with the MESA losses of step ``step`` (0-based)
        before ``total``, which gains ``weight · Σ_p w_p · Σ (MESA entries of p)``; the entries are
        unweighted, per partition and head. ``outputs[p]``: the student's output on ``images[p]``
        with CPE crops ``crops[p]``. Before ``start_step`` the entries are there, all 0."""
        on = self.active(step)
        ema_out = self._forward(images, crops) if on else [None] * len(outputs)
        losses: dict[str, torch.Tensor] = {}
        added = torch.zeros((), device=images[0].device)
        for (resolution, keys), student, ema, w_p in zip(partitions, outputs, ema_out, partition_weights):
            part = self._entries(resolution, keys, student, ema)
            losses |= part
            for v in part.values():
                added = added + w_p * v
        total = out["total"] + self.cfg.weight * added
        return {k: v for k, v in out.items() if k != "total"} | losses | {"total": total}

    @torch.no_grad()
    def _forward(self, images: list[torch.Tensor], crops: list[torch.Tensor]) -> list:
        return [self.ema(x, crops=c) for x, c in zip(images, crops)]

    def _entries(self, resolution: int, keys: list[KeyTarget], out, ema) -> dict[str, torch.Tensor]:
        """One partition's MESA losses; ``ema`` None: zeros of the same names (before the start)."""
        zero = torch.zeros((), device=out.features.device)
        entries: dict[str, torch.Tensor] = {}
        heads = sorted({t.teacher for t in keys})
        # a head whose summary this partition does not train (SAM, or weight 0 as SAM3's) has none to follow
        summaries = {t.teacher for t in keys if t.summary and t.weight_summary > 0}
        outputs = self.cfg.outputs
        for h in heads:
            if "features" in outputs:
                pred = out.adaptors[h].features
                entries[f"{MESA}:{resolution}:{h}/features"] = (
                    F.mse_loss(pred.float(), ema.adaptors[h].features.float()) if ema is not None else zero
                )
            if "summary" in outputs and h in summaries:
                pred = out.adaptors[h].summary
                entries[f"{MESA}:{resolution}:{h}/summary"] = (
                    cosine_distance(pred, ema.adaptors[h].summary) if ema is not None else zero
                )
        if "backbone" in outputs:
            entries[f"{MESA}:{resolution}/backbone"] = (
                F.mse_loss(out.features.float(), ema.features.float()) if ema is not None else zero
            )
        return entries

    # -- persistence -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA student's weights (student keys, float32): what the checkpoint keeps."""
        return {k: v.detach().clone() for k, v in self.ema.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a checkpoint's EMA (exactly: resume computes the same steps)."""
        self.ema.load_state_dict(state, strict=True)

    def final_tensors(self) -> dict[str, torch.Tensor]:
        """The EMA as final-weights tensors, ``ema.<student key>``."""
        return {f"{EMA_PREFIX}{k}": v for k, v in self.state_dict().items()}

    def nbytes(self) -> int:
        """Bytes the EMA copy holds on the device (and adds to every checkpoint)."""
        return sum(v.numel() * v.element_size() for v in self.ema.state_dict().values())


def build_mesa(student: Student, cfg: MesaConfig, checkpoint: dict | None) -> Mesa | None:
    """The stage's :class:`Mesa` (None when off), its EMA taken from ``checkpoint["mesa"]`` when
    resuming, else equal to ``student``'s current (initial) weights."""
    if not cfg.enabled:
        return None
    mesa = Mesa(student, cfg)
    if checkpoint is not None and checkpoint.get(MESA) is not None:
        mesa.load_state_dict(checkpoint[MESA])
    return mesa


def mesa_note(cfg: MesaConfig, checkpoint: dict | None) -> str | None:
    """A note when a resumed run turns MESA on: its EMA starts at the resumed weights."""
    if cfg.enabled and checkpoint is not None and checkpoint.get(MESA) is None:
        return (
            f"note: the checkpoint (step {checkpoint.get('step')}) kept no EMA (MESA was off): "
            "the EMA starts at its weights"
        )
    return None
