"""Typed pipeline configuration: what one named entry of ``pipelines.yaml`` means.

Every model is frozen and forbids unknown keys, so a typo in the YAML is an error naming the
field rather than a silently ignored setting. Cross-field rules (a stage asking for a target key
no teacher produces, a mosaic whose tiles cannot hold its images) are checked here too, so
``radio config validate`` catches them before any work starts.

Vocabulary (paper / DESIGN.md §4):

- *teacher*: a frozen model, e.g. DFN CLIP; one config entry per teacher.
- *target key*: a teacher at one input geometry, e.g. ``dfn_clip@224`` or ``sam_h@256``; the unit
  the store holds (features, summary, moments) and the trainer matches.
- *mosaic*: k×k images tiled into one ``canvas``-sized teacher input (SAM at 1024).
- *stage*: one training run at fixed resolutions; *partition*: one resolution inside a stage,
  with its own batch size and target keys (stage 3 has two).
"""

from __future__ import annotations

import re
from typing import Final, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .mosaic import Misfit, misfit, tile_side
from .resolutions import exact_sizes

PATCH: Final = 16
"""The student's patch size; student resolutions are multiples of it."""

TARGET_KEY = re.compile(r"^[a-z0-9_]+@(\d+)$")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _multiple_of_patch(value: int, what: str) -> int:
    if value <= 0 or value % PATCH:
        raise ValueError(f"{what} {value} is not a positive multiple of {PATCH}")
    return value


class DataConfig(Frozen):
    """Input shards in DataComp / img2dataset webdataset layout."""

    shards: tuple[str, ...] = Field(
        min_length=1,
        description="tar paths, globs or fsspec URLs (e.g. data/*.tar, s3://bucket/{00000000..00000099}.tar)",
    )
    min_image_size: int = Field(32, gt=0, description="images with a shorter side are recorded as too_small")
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="images with more pixels are recorded as decompression_bomb"
    )


class StoreConfig(Frozen):
    """The Zarr v3 feature store (DESIGN.md §3)."""

    path: str = Field(description="directory of the Zarr group (local path or fsspec URL)")
    shard_rows: int = Field(
        64, gt=0, description="rows per Zarr shard of a feature array: the unit one writer writes whole"
    )
    compressor: Literal["zstd", "none"] = Field(
        "zstd", description="fp16 features barely compress (~1.1x); 'none' writes fastest"
    )


class CropConfig(Frozen):
    """How featurize chooses each crop box (seeded by run seed, sample key and crop index)."""

    kind: Literal["random_resized", "random_square", "center_square"] = Field(
        "random_resized",
        description="random_resized: RADIO's law (torchvision RandomResizedCrop: area and aspect jitter); "
        "random_square: a square whose side is U(scale) of the shorter side; center_square: the centred square",
    )
    scale: tuple[float, float] = Field(
        (0.5, 1.0),
        description="random_resized: range of the crop's area as a fraction of the image's; "
        "square kinds: range of the side as a fraction of the shorter side",
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="random_resized: range of the aspect ratio w/h (drawn log-uniform)"
    )

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale {list(v)} must satisfy 0 < low <= high <= 1")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError(f"ratio {list(v)} must satisfy 0 < low <= high")
        return v


class FeaturizeConfig(Frozen):
    seed: int = 0
    batch_size: int = Field(16, gt=0, description="images per teacher forward (mosaic teachers: tiles)")
    crop: CropConfig = CropConfig()
    crops_per_image: int = Field(
        1,
        ge=1,
        le=64,
        description="K: crops featurized per image, as K store rows (decoded once; K x the bytes and teacher "
        "time); each epoch, distill draws one of an image's K crops",
    )
    student_pixels: Literal["none", "jpeg", "raw"] = Field(
        "none",
        description="also store each row's student view at every partition resolution of the stages, so "
        "distill reads it instead of decoding the tar: none, jpeg (ragged JPEG bytes at jpeg_quality) or raw "
        "(uint8 [r, r, 3]); `radio store add-pixels` adds them to a store later",
    )
    jpeg_quality: int = Field(
        95, ge=1, le=95, description="student_pixels: jpeg: the JPEG quality of the stored views (4:2:0)"
    )
    shift_margin: int = Field(
        0,
        ge=0,
        le=8,
        description="m: each teacher sees its crop extended by m of its patches on every side, so a key caches a "
        "(g+2m)² grid and phase 2 can shift the student's view by up to m patches (stages[].shift; issue 26); "
        "mosaic keys hold the margin in their tiles' padding",
    )

    @model_validator(mode="after")
    def _distinct_crops(self) -> FeaturizeConfig:
        if self.crops_per_image > 1 and self.crop.kind == "center_square":
            raise ValueError("crops_per_image > 1 needs a random crop kind (center_square gives K equal crops)")
        return self


class TargetConfig(Frozen):
    """One target key of a teacher: the geometry the teacher sees."""

    resolution: int = Field(
        gt=0,
        description="side of the square crop given to the teacher; for a mosaic, the side of each tile image",
    )
    mosaic: int | None = Field(
        None,
        description="k: tile k×k images into one canvas-sized input (SAM); 1 pads one image to the canvas",
    )
    canvas: int = Field(1024, gt=0, description="teacher input side that mosaic tiles divide (SAM: 1024)")
    patch: int = Field(
        PATCH,
        gt=0,
        description="the canvas teacher's patch that mosaic tiles and resolution align to (SAM: 16, SAM3: 14); "
        "featurize checks the geometry again with the teacher's own patch",
    )

    @model_validator(mode="after")
    def _mosaic_geometry(self) -> TargetConfig:
        if self.mosaic is None:
            return self
        k = self.mosaic
        why = misfit(self.canvas, k, self.resolution, self.patch)  # teacher-patch-aligned tiles
        if why is Misfit.NOT_POWER_OF_TWO:
            raise ValueError(f"mosaic {k} must be a power of two (1, 2, 4, ...)")
        if self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} is not a positive multiple of {self.patch}")
        tile = tile_side(self.canvas, k)
        if why is Misfit.UNALIGNED:
            raise ValueError(f"mosaic {k} does not split canvas {self.canvas} into {self.patch}-aligned tiles")
        if why is Misfit.TOO_SMALL:
            raise ValueError(f"mosaic {k} tiles are {tile} px and cannot hold resolution {self.resolution}")
        return self


class TeacherConfig(Frozen):
    """A frozen teacher model and the target keys computed from it."""

    model: str = Field(description="teacher registry name, e.g. dfn_clip_h14_378 (see `radio teachers`)")
    weights: str | None = Field(
        None,
        description="hub id (hf-hub:ORG/NAME) or local checkpoint file; null = random init (tiny models, tests)",
    )
    targets: dict[str, TargetConfig] = Field(min_length=1)
    output_scale: float = Field(
        1.0,
        gt=0,
        description="multiply the teacher's outputs by this (recorded in provenance); experiments use it to make "
        "one teacher's variance dominate, as SAM's does among the real teachers (paper §4.4)",
    )

    @field_validator("targets")
    @classmethod
    def _target_key_names(cls, targets: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for key, spec in targets.items():
            m = TARGET_KEY.match(key)
            if not m:
                raise ValueError(f"target key {key!r} must look like name@resolution, e.g. dfn_clip@224")
            if int(m.group(1)) != spec.resolution:
                raise ValueError(f"target key {key!r} names resolution {m.group(1)} but sets {spec.resolution}")
        return targets


StudentSize = Literal["tiny", "b", "so400m", "l", "h", "g"]


def _auto_or_bool(v: object, field: str) -> object:
    """One message for a ``true | false | auto`` field (else pydantic reports both union branches)."""
    if isinstance(v, bool) or v == "auto":
        return v
    raise ValueError(f"{field} {v!r}: use true, false or auto")


class StudentConfig(Frozen):
    size: StudentSize = "b"
    patch: Literal[16] = PATCH
    cpe_max_size: int = Field(2048, description="side of the image the learned CPE grid covers")
    register_multiple: int = Field(8, gt=0, description="CLS + registers are padded to a multiple of this")
    adaptor_hidden: int = Field(1520, gt=0, description="hidden width of each MLP adaptor (RADIO v2.5: 1520)")
    adaptor_inner: int = Field(
        0, ge=0, description="inner residual blocks (LN, GELU, Linear) of each adaptor MLP (RADIO v2.5's MLP2: 1)"
    )
    pos_dropout: float = Field(
        0.1, ge=0, lt=1, description="share of training images whose position encoding is dropped (RADIO: 0.1)"
    )
    checkpoint_activations: bool | Literal["auto"] = Field(
        "auto",
        description="recompute each block's activations in backward instead of keeping them (less memory, "
        "about 1/3 more compute); auto: on for sizes h and g in stages with a partition of >= 1024 px",
    )

    @field_validator("cpe_max_size")
    @classmethod
    def _cpe(cls, v: int) -> int:
        return _multiple_of_patch(v, "cpe_max_size")

    @field_validator("checkpoint_activations", mode="before")
    @classmethod
    def _checkpointing(cls, v: object) -> object:
        return _auto_or_bool(v, "checkpoint_activations")


class LossWeight(Frozen):
    summary: float = Field(1.0, ge=0)
    features: float = Field(1.0, ge=0)


class PartitionConfig(Frozen):
    """One student resolution (or a set drawn from per step) inside a stage, trained against its
    own target keys."""

    resolution: int | None = Field(None, description="the student's input side (px) at every step")
    resolutions: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="instead of resolution: sizes (px) the student's input side is drawn from, one per step "
        "(C-RADIOv4's stochastic resolutions; same draw on every rank). Keys with an exact grid (mosaics: SAM) "
        "train only at the sizes whose grid equals theirs and are skipped at the other steps",
    )
    batch_size: int | None = Field(
        None, gt=0, description="global images per step at every size (set this or tokens_per_step)"
    )
    tokens_per_step: int | None = Field(
        None,
        gt=0,
        description="instead of batch_size: a fixed global token budget per step; the batch at size S is "
        "tokens_per_step // (S/16)², rounded down to a multiple of the world size",
    )
    targets: tuple[str, ...] = Field(min_length=1)

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int | None) -> int | None:
        return v if v is None else _multiple_of_patch(v, "resolution")

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        for r in v:
            _multiple_of_patch(r, "resolutions: size")
        if len(set(v)) != len(v):
            raise ValueError(f"resolutions {list(v)} names a size twice")
        return v

    @model_validator(mode="after")
    def _one_of_each(self) -> PartitionConfig:
        if (self.resolution is None) == (self.resolutions is None):
            raise ValueError("set exactly one of resolution and resolutions")
        if (self.batch_size is None) == (self.tokens_per_step is None):
            raise ValueError("set exactly one of batch_size and tokens_per_step")
        if self.tokens_per_step is not None and self.tokens_per_step < (max(self.sizes) // PATCH) ** 2:
            big = max(self.sizes)
            raise ValueError(
                f"tokens_per_step {self.tokens_per_step} is less than one {big} px image ({(big // PATCH) ** 2} tokens)"
            )
        return self

    @property
    def sizes(self) -> tuple[int, ...]:
        """The sizes a step may train at: ``(resolution,)`` or ``resolutions``."""
        return self.resolutions if self.resolutions is not None else (cast(int, self.resolution),)

    @property
    def nominal(self) -> int:
        """The partition's one resolution, or the largest of its set (names it in messages)."""
        return max(self.sizes)

    def batch_at(self, size: int) -> int:
        """Global images per step at ``size`` px (before the trainer rounds a token budget's batch to
        a multiple of the world size)."""
        if self.batch_size is not None:
            return self.batch_size
        return cast(int, self.tokens_per_step) // (size // PATCH) ** 2


class OptimizerConfig(Frozen):
    name: Literal["lamb", "adamw"] = "lamb"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(2e-5, ge=0, description="weight decay of the backbone's weights")
    head_weight_decay: float = Field(
        5e-5, ge=0, description="weight decay of the adaptor heads' weights (RADIO's head_weight_decay: 5e-5)"
    )
    grad_clip: float | None = Field(1.0, gt=0)


class ScheduleConfig(Frozen):
    kind: Literal["cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class ShiftConfig(Frozen):
    """C-RADIOv4's shift-equivariant loss on a cache (issue 26): each row's student view is shifted
    by whole student patches and compared with the matching window of the key's cached margin."""

    enabled: bool = Field(False, description="shift the student's view per row (needs featurize.shift_margin >= 1)")
    sigma: float = Field(
        0.5,
        gt=0,
        le=8,
        description="offsets are patch × round(N(0, sigma)) per axis, clamped to the store's margin (C-RADIOv4: 0.5)",
    )


class MesaConfig(Frozen):
    """MESA (C-RADIOv4, NVlabs/RADIO#181): an exponential moving average of the student's weights,
    run on the same batch as an extra teacher whose outputs the student is pulled towards."""

    enabled: bool = Field(False, description="keep an EMA of the student and add the MESA loss (off: no cost)")
    decay: float = Field(
        0.9996,
        ge=0,
        lt=1,
        description="EMA decay per optimizer step: ema = decay·ema + (1 − decay)·w (C-RADIOv4: 0.9996, #181)",
    )
    weight: float = Field(
        1.0,
        ge=0,
        description="weight of each head's MESA loss in the total (C-RADIOv4 publishes none; 1.0 as its "
        "teachers' feature losses)",
    )
    start_step: int = Field(
        0,
        ge=0,
        description="the stage step from which the MESA loss (and its extra forward) runs; the EMA is updated "
        "from step 0 regardless (C-RADIOv4 runs the EMA for all of training, #181)",
    )
    outputs: tuple[Literal["features", "summary", "backbone"], ...] = Field(
        ("features",),
        min_length=1,
        description="which outputs MESA compares: features (every head's patch features, MSE in PHI-S space), "
        "summary (every head's summary, cosine), backbone (the backbone's patch tokens, MSE)",
    )

    @field_validator("outputs")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"mesa.outputs {list(v)}: name each output once")
        return v


class StageConfig(Frozen):
    steps: int = Field(gt=0)
    partitions: tuple[PartitionConfig, ...] = Field(min_length=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss_weights: dict[str, LossWeight] = Field(
        default_factory=dict, description="per target key; keys not named weigh 1.0"
    )
    head_warmup_steps: int = Field(
        5,
        ge=0,
        description="in a stage where some adaptor head is newly initialised (stage 1, or a teacher absent "
        "from the initial weights), its first N steps train only the heads: the backbone is frozen. "
        "RADIO's head_warmup=5; its unit is not published (read here as optimizer steps)",
    )
    checkpoint_every: int = Field(1000, gt=0)
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the student: auto (on for CUDA, off on CPU), true or false; a model that "
        "fails to compile trains eagerly, with a note",
    )
    log_every: int = Field(
        10,
        gt=0,
        description="steps between moving the losses to the host (one device sync, one all-reduce, the "
        "non-finite check, the metrics lines); checkpoints, stop signals and the end also log",
    )
    accumulate: int = Field(
        1,
        gt=0,
        description="micro-steps per optimizer step: the same global batch in N forward/backward passes "
        "(every partition's batch size must divide by N times the number of ranks)",
    )
    seed: int = 0
    sampling: Literal["rows", "blocks"] = Field(
        "rows",
        description="rows: any training rows per batch; blocks: whole Zarr shards per batch "
        "(contiguous target reads, less mixing within a batch)",
    )
    partition_weights: Literal["equal", "batch"] | tuple[float, ...] = Field(
        "equal",
        description="how partitions' losses add up: equal (each partition's mean loss weighs 1; the default, so "
        "runs before this field train unchanged, and RADIO's when its GPUs are split evenly over partitions), "
        "batch (w_p = P·B_p/ΣB: RADIO's gradient average over GPUs holding the same per-GPU batch), "
        "or one number >= 0 per partition",
    )
    shift: ShiftConfig = Field(ShiftConfig(), description="the shift-equivariant loss (off unless enabled)")
    mesa: MesaConfig = Field(MesaConfig(), description="MESA: an EMA of the student as an extra teacher (off)")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v: object) -> object:
        return _auto_or_bool(v, "compile")

    @field_validator("partition_weights", mode="before")
    @classmethod
    def _weights_kind(cls, v: object) -> object:
        if isinstance(v, str) and v not in ("equal", "batch"):  # else pydantic reports both union branches
            raise ValueError(f"partition_weights {v!r}: use equal, batch or one number per partition")
        return v

    @model_validator(mode="after")
    def _accumulate(self) -> StageConfig:
        bad = [p.batch_size for p in self.partitions if p.batch_size is not None and p.batch_size % self.accumulate]
        if bad:
            raise ValueError(
                f"accumulate {self.accumulate}: batch size {bad[0]} does not divide into that many micro-steps"
            )
        return self

    @model_validator(mode="after")
    def _partition_weights(self) -> StageConfig:
        w = self.partition_weights
        if isinstance(w, tuple):
            if len(w) != len(self.partitions):
                raise ValueError(f"partition_weights has {len(w)} numbers for {len(self.partitions)} partitions")
            if any(not v >= 0 for v in w):  # also refuses NaN
                raise ValueError(f"partition_weights {list(w)}: every weight must be >= 0")
        if w == "batch" and any(p.tokens_per_step is not None for p in self.partitions):
            raise ValueError("partition_weights batch needs batch_size in every partition (not tokens_per_step)")
        if self.mesa.enabled and self.mesa.start_step >= self.steps:
            raise ValueError(f"mesa.start_step {self.mesa.start_step} >= steps {self.steps}: MESA would never run")
        return self

    @property
    def partition_weight_values(self) -> tuple[float, ...]:
        """One loss weight per partition, as :attr:`partition_weights` chooses (``batch``: P·B_p/ΣB,
        so equal batches give each partition 1, the same total as ``equal``)."""
        w, parts = self.partition_weights, self.partitions
        if w == "equal":
            return (1.0,) * len(parts)
        if w == "batch":
            batches = [p.batch_at(p.nominal) for p in parts]  # (tokens_per_step is refused with batch)
            return tuple(len(parts) * b / sum(batches) for b in batches)
        return tuple(float(v) for v in w)


class EvalConfig(Frozen):
    """What evaluation needs from the pipeline. Evaluation settings of their own (resolutions,
    k, temperature) are the `radio eval` commands' options."""

    held_out: int = Field(
        0,
        ge=0,
        description="images reserved for evaluation (the last images of the store, with all their "
        "crops_per_image rows); training never reads them",
    )


class PipelineConfig(Frozen):
    """One named pipeline: data → featurize (teachers) → store → distill (student, stages) → eval."""

    description: str = ""
    data: DataConfig
    store: StoreConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    teachers: dict[str, TeacherConfig] = Field(min_length=1)
    normalization: Literal["phis", "standardize", "none"] = Field(
        "phis", description="target normalization for the loss (paper Table 3 compares these)"
    )
    phis_key_weighting: Literal["count", "equal"] = Field(
        "count",
        description="how `radio fit-phis` merges a teacher's keys into its one normalizer: count (every vector "
        "alike, so the key with the most tokens dominates; the default, as before this field) or equal (each key's mean and covariance "
        "weighted alike); changing it refits",
    )
    student: StudentConfig = StudentConfig()
    stages: tuple[StageConfig, ...] = Field(min_length=1)
    eval: EvalConfig = EvalConfig()
    out: str = Field("runs/default", description="run folder for checkpoints, metrics and exports")

    @model_validator(mode="after")
    def _targets_exist(self) -> PipelineConfig:
        produced: dict[str, str] = {}
        for name, teacher in self.teachers.items():
            for key in teacher.targets:
                if key in produced:
                    raise ValueError(f"target key {key!r} is produced by both {produced[key]!r} and {name!r}")
                produced[key] = name
        for i, stage in enumerate(self.stages):
            for j, part in enumerate(stage.partitions):
                for key in part.targets:
                    if key not in produced:
                        raise ValueError(
                            f"stages.{i}.partitions.{j}.targets: {key!r} is produced by no teacher "
                            f"(known: {', '.join(sorted(produced))})"
                        )
            for key in stage.loss_weights:
                if key not in produced:
                    raise ValueError(f"stages.{i}.loss_weights: {key!r} is produced by no teacher")
            if stage.shift.enabled and self.featurize.shift_margin == 0:
                raise ValueError(
                    f"stages.{i}.shift.enabled needs featurize.shift_margin >= 1 (no cached margin to shift into)"
                )
        self._margin_fits_tiles()
        for i, stage in enumerate(self.stages):
            for j, part in enumerate(stage.partitions):
                if part.resolutions is not None:
                    self._exact_keys_fit(f"stages.{i}.partitions.{j}", part)
        return self

    def _exact_keys_fit(self, where: str, part: PartitionConfig) -> None:
        """A partition with ``resolutions``: every exact-grid key (a mosaic) must fit at least one size."""
        for key in part.targets:
            _, _, spec = self.target(key)
            if spec.mosaic is None:
                continue
            grid = spec.resolution // spec.patch
            if not exact_sizes(grid, part.sizes, PATCH):
                raise ValueError(
                    f"{where}.resolutions: {key} has an exact {grid}x{grid} grid and accepts only "
                    f"{grid * PATCH} px, which {list(part.sizes)} does not hold"
                )
        exact = self.exact_key_sizes(part)
        if len(exact) == len(part.targets):  # no key to train at a size no exact key fits
            idle = [s for s in part.sizes if not any(s in fits for fits in exact.values())]
            if idle:
                raise ValueError(f"{where}.resolutions: no key of the partition trains at {idle} px")

    def exact_key_sizes(self, part: PartitionConfig) -> dict[str, tuple[int, ...]]:
        """``{exact key of part: the sizes of part it trains at}`` (a mosaic key's grid is fixed)."""
        out = {}
        for key in part.targets:
            spec = self.target(key)[2]
            if spec.mosaic is not None:
                out[key] = exact_sizes(spec.resolution // spec.patch, part.sizes, PATCH)
        return out

    def _margin_fits_tiles(self) -> None:
        """A mosaic key's margin lives in its tile's padding, which must hold 2·m patches."""
        m = self.featurize.shift_margin
        for teacher in self.teachers.values():
            for key, t in teacher.targets.items():
                if m and t.mosaic is not None and misfit(t.canvas, t.mosaic, t.resolution + 2 * m * t.patch, t.patch):
                    spare = tile_side(t.canvas, t.mosaic) - t.resolution
                    raise ValueError(
                        f"featurize.shift_margin {m}: {key}'s mosaic {t.mosaic} tiles have {spare} px of padding, "
                        f"less than the {2 * m * t.patch} px a margin of {m} patches of {t.patch} px needs"
                    )

    def target(self, key: str) -> tuple[str, TeacherConfig, TargetConfig]:
        """(teacher name, teacher config, target config) of a target key."""
        for name, teacher in self.teachers.items():
            if key in teacher.targets:
                return name, teacher, teacher.targets[key]
        raise KeyError(key)

    @property
    def target_keys(self) -> tuple[str, ...]:
        return tuple(k for t in self.teachers.values() for k in t.targets)


class PipelinesFile(Frozen):
    """The whole ``pipelines.yaml``: named pipelines and which one is the default."""

    default: str
    pipelines: dict[str, PipelineConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_exists(self) -> PipelinesFile:
        if self.default not in self.pipelines:
            raise ValueError(f"default {self.default!r} is not a pipeline (known: {', '.join(self.pipelines)})")
        return self
