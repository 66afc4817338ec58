"""The student: a ViT/16 built from timm blocks, with CPE, per-teacher CLS tokens and adaptors.

Token layout (RADIO ``cls_token.py``)::

    [ CLS_1 .. CLS_n | REG_1 .. REG_r | patch tokens (h*w, row-major) ]

- one CLS token per teacher with a summary target, in the order of ``teachers``;
- ``r = (-n) mod register_multiple`` registers, so ``n + r`` is a multiple of
  ``register_multiple`` (3 CLS + 5 registers = 8). RADIO's formula adds a full
  ``register_multiple`` when ``n`` already is a multiple; we add none then;
- the position embedding (:class:`~radio.distill.cpe.CPE`) is added to patch tokens only.

Input is ``[B, 3, H, W]`` in [0, 1] with H and W multiples of 16; the model normalizes it
itself with the OpenAI CLIP mean/std (the *input conditioner*), as RADIO does, so a checkpoint
carries its own preprocessing.

There is no final norm after the last block (RADIO v2.5 ``model_norm=False``): ``features`` is
the last block's output, and the adaptors begin with their own LayerNorm after ``fc1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adaptors import AdaptorOutput, AdaptorSpec, TeacherAdaptor
from .cpe import CPE

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "STUDENT_SIZES",
    "AdaptorOutput",
    "AdaptorSpec",
    "InputConditioner",
    "Student",
    "StudentOutput",
    "StudentSpec",
    "student_spec",
]


@dataclass(frozen=True)
class StudentSpec:
    """A ViT body as data: width, depth, heads, MLP ratio, patch size."""

    name: str
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    patch: int = 16


STUDENT_SIZES: dict[str, StudentSpec] = {
    spec.name: spec
    for spec in (
        StudentSpec("tiny", dim=64, depth=2, heads=2),  # CPU tests
        StudentSpec("b", dim=768, depth=12, heads=12),
        # timm's vit_so400m_patch16_radio_v4 (C-RADIOv4-SO400M): MLP 4304 = int(1152 * 3.7362)
        StudentSpec("so400m", dim=1152, depth=27, heads=16, mlp_ratio=3.7362),
        StudentSpec("l", dim=1024, depth=24, heads=16),
        StudentSpec("h", dim=1280, depth=32, heads=16),
        # DINOv2's ViT-g uses a SwiGLU MLP (ratio ~2.67 x 2); a plain GELU MLP at ratio 4 has
        # about the same parameter count and keeps every size on the same timm block.
        StudentSpec("g", dim=1536, depth=40, heads=24),
    )
}


def student_spec(size: str | StudentSpec) -> StudentSpec:
    """The spec of a named size; a :class:`StudentSpec` is returned as it is."""
    if isinstance(size, StudentSpec):
        return size
    if size not in STUDENT_SIZES:
        raise ValueError(f"unknown student size {size!r}; known sizes: {', '.join(STUDENT_SIZES)}")
    return STUDENT_SIZES[size]


@dataclass
class StudentOutput:
    """``summary [B, n_cls, D]`` (CLS tokens in teacher order), ``features [B, h, w, D]``
    (patch tokens after the last block) and one :class:`AdaptorOutput` per teacher."""

    summary: torch.Tensor
    features: torch.Tensor
    adaptors: dict[str, AdaptorOutput]


class InputConditioner(nn.Module):
    """``[B, 3, H, W]`` in [0, 1] → ``(x - mean) / std``. Mean/std are buffers so a checkpoint
    records the normalization it was trained with."""

    def __init__(self, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def num_registers(num_cls: int, register_multiple: int) -> int:
    """Registers that pad ``num_cls`` CLS tokens up to a multiple of ``register_multiple``."""
    if register_multiple < 1:
        raise ValueError(f"register_multiple must be >= 1, got {register_multiple}")
    return (register_multiple - num_cls % register_multiple) % register_multiple


class Student(nn.Module):
    """ViT/``patch`` student with CPE, one CLS token per summary teacher, registers and adaptors.

    ``teachers`` is the ordered list of :class:`AdaptorSpec`; CLS slot ``k`` belongs to the
    ``k``-th teacher that has a summary (see ``summary_slots``). ``adaptor_hidden`` is the
    hidden width of every adaptor MLP (RADIO v2.5: 1520), ``adaptor_inner`` its number of inner
    residual blocks (v2.5: 1); ``pos_dropout`` the share of training images without position
    encoding (RADIO: 0.1).
    """

    def __init__(
        self,
        size: str | StudentSpec,
        teachers: Sequence[AdaptorSpec],
        *,
        cpe_max_size: int = 2048,
        register_multiple: int = 8,
        adaptor_hidden: int = 1520,
        adaptor_inner: int = 0,
        pos_dropout: float = 0.0,
    ):
        super().__init__()
        self.spec = spec = student_spec(size)
        self.teachers = tuple(teachers)
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        self.summary_slots = {t.name: k for k, t in enumerate(t for t in self.teachers if t.summary_dim is not None)}
        self.num_cls = len(self.summary_slots)
        self.num_registers = num_registers(self.num_cls, register_multiple)
        self.num_prefix_tokens = self.num_cls + self.num_registers

        self.input_conditioner = InputConditioner()
        # Bias-free, as in RADIO's timm students (their patch generator has no bias).
        self.patch_embed = nn.Conv2d(3, spec.dim, kernel_size=spec.patch, stride=spec.patch, bias=False)
        self.cpe = CPE(spec.dim, cpe_max_size, spec.patch, pos_dropout)
        self.cls_tokens = nn.Parameter(torch.zeros(1, self.num_cls, spec.dim)) if self.num_cls else None
        self.registers = nn.Parameter(torch.zeros(1, self.num_registers, spec.dim)) if self.num_registers else None
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(spec.dim, spec.heads, spec.mlp_ratio, qkv_bias=True, norm_layer=norm)  # type: ignore[arg-type]
            for _ in range(spec.depth)  # (timm types norm_layer as a class; it takes any callable)
        )
        self.adaptors = nn.ModuleDict(
            {t.name: TeacherAdaptor(t, spec.dim, adaptor_hidden, adaptor_inner) for t in self.teachers}
        )
        # Activation checkpointing (``student.checkpoint_activations``): when training, each block
        # keeps only its input and recomputes the rest in backward (memory O(depth) → O(1) blocks).
        self.grad_checkpointing = False
        self._init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them (timm's name)."""
        self.grad_checkpointing = enable

    def _init_weights(self) -> None:
        # timm ViT init: truncated normal (std 0.02) for every Linear and the prefix tokens.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for tokens in (self.cls_tokens, self.registers):
            if tokens is not None:
                nn.init.trunc_normal_(tokens, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: position grid, CLS tokens, registers."""
        names = {"cpe.grid"}
        names |= {"cls_tokens"} if self.cls_tokens is not None else set()
        names |= {"registers"} if self.registers is not None else set()
        return names

    # -- forward pieces ------------------------------------------------------------------------

    def input_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """Token grid ``(h, w)`` of images ``[B, 3, H, W]``; refuses sizes off the patch grid."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"student input must be images [B, 3, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        patch = self.spec.patch
        if height % patch or width % patch:
            raise ValueError(f"student input size {height}x{width} (HxW) is not a multiple of the patch size {patch}")
        return height // patch, width // patch

    def embed(
        self, x: torch.Tensor, generator: torch.Generator | None = None, crops: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, 3, H, W]`` → tokens ``[B, P + h*w, D]`` before the first block, and ``(h, w)``.
        ``crops [B, 4 or 5]``: training-mode CPE boxes (and position-dropout keep factors) to use instead of drawing them."""
        h, w = self.input_grid(x)
        batch = x.shape[0]
        patches = self.patch_embed(self.input_conditioner(x)).flatten(2).transpose(1, 2)  # [B, h*w, D]
        patches = patches + self.cpe(h, w, batch, generator=generator, crops=crops).to(patches.dtype)
        prefix = [t.expand(batch, -1, -1).to(patches.dtype) for t in (self.cls_tokens, self.registers) if t is not None]
        return torch.cat([*prefix, patches], dim=1), (h, w)

    def _patch_grid(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``[B, P + h*w, D]`` (or ``[B, h*w, D]`` if already stripped) → ``[B, h, w, D]``."""
        patches = tokens[:, tokens.shape[1] - h * w :]
        return patches.reshape(patches.shape[0], h, w, patches.shape[-1])

    def head(self, tokens: torch.Tensor, h: int, w: int) -> StudentOutput:
        """Tokens after the last block ``[B, P + h*w, D]`` → :class:`StudentOutput` with adaptors."""
        summary = tokens[:, : self.num_cls]
        features = self._patch_grid(tokens, h, w)
        adaptors = {
            name: adaptor(summary[:, self.summary_slots[name]] if name in self.summary_slots else None, features)
            for name, adaptor in self.adaptors.items()
        }
        return StudentOutput(summary, features, adaptors)

    def forward(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, crops: torch.Tensor | None = None
    ) -> StudentOutput:
        """Images ``[B, 3, H, W]`` in [0, 1] → :class:`StudentOutput`. ``generator`` drives the
        training-mode CPE crops (None: the global torch RNG) unless ``crops [B, 4]`` gives them."""
        tokens, (h, w) = self.embed(x, generator, crops)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
        return self.head(tokens, h, w)

    # -- intermediate layers ---------------------------------------------------------------------

    def take_indices(self, indices: int | Sequence[int]) -> list[int]:
        """Block indices, sorted and non-negative: an ``int`` n means the last n blocks;
        negative entries count from the end (``-1`` = last block)."""
        depth = self.spec.depth
        if isinstance(indices, int):
            if not 1 <= indices <= depth:
                raise ValueError(f"take the last n blocks needs 1 <= n <= {depth}, got {indices}")
            return list(range(depth - indices, depth))
        taken = [i + depth if i < 0 else i for i in indices]
        if not taken or any(not 0 <= i < depth for i in taken) or len(set(taken)) != len(taken):
            raise ValueError(f"block indices must be distinct and within [-{depth}, {depth - 1}], got {list(indices)}")
        return sorted(taken)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int],
        aggregation: Literal["sparse", "dense"] = "sparse",
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[StudentOutput, list[torch.Tensor]]:
        """The final :class:`StudentOutput` and one patch grid ``[B, h, w, D]`` per chosen block
        (in increasing block order, see :meth:`take_indices`).

        ``"sparse"``: the patch tokens right after each chosen block. ``"dense"`` (paper sec.
        4.8, Dense-Connector style): for chosen blocks ``i_1 < i_2 < ...``, the mean of the
        outputs of blocks ``0..i_1``, then ``i_1+1..i_2``, and so on; blocks after the last
        chosen one feed only the final output. Averages accumulate in float32 and are returned
        in the tokens' dtype.
        """
        if aggregation not in ("sparse", "dense"):
            raise ValueError(f"aggregation must be 'sparse' or 'dense', got {aggregation!r}")
        take = self.take_indices(indices)
        chosen_blocks = set(take)
        tokens, (h, w) = self.embed(x, generator)
        intermediates: list[torch.Tensor] = []
        total: torch.Tensor | None = None
        count = 0
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if aggregation == "dense" and i <= take[-1]:
                patches = tokens[:, self.num_prefix_tokens :].float()
                total, count = (patches if total is None else total + patches), count + 1
            if i in chosen_blocks:
                chosen = tokens if aggregation == "sparse" or total is None else (total / count).to(tokens.dtype)
                intermediates.append(self._patch_grid(chosen, h, w))
                total, count = None, 0
        return self.head(tokens, h, w), intermediates
