"""`radio distill --stage N`: train the student on one stage of the pipeline (phase 2)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from .errors import EXIT_FAILED, user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, OutOpt, PipelineOpt, StoreOpt, load


@user_errors
def distill(
    stage: Annotated[
        int, typer.Option("--stage", help="stage to train (1-based); stage N starts from stage N-1's weights")
    ],
    steps: Annotated[int | None, typer.Option("--steps", help="override the stage's step count")] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="start from these weights instead: radio's own (.safetensors or a checkpoint), timm:NAME[.tag], "
            "hf-hub:ORG/NAME (from the Hugging Face cache), a saved transformers RadioModel folder, an NVIDIA "
            "RADIO torch.hub checkpoint or a timm / RadioModel state dict file",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes per rank")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="cuda, cuda:1, cpu [default: cuda if available]")
    ] = None,
    flip: Annotated[bool, typer.Option("--flip", help="random horizontal flips of image and target grids")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
    pipeline: PipelineOpt = None,
    store: StoreOpt = None,
    out: OutOpt = None,
) -> None:
    """Train the student against the store's cached targets for one stage; resumes from its checkpoint.

    Under torchrun (`torchrun --nproc-per-node N -m radio.cli distill ...`) runs DDP: NCCL on GPUs,
    gloo on CPU. SIGTERM / SIGUSR1 finish the step, write a checkpoint and exit; re-run to resume.
    """
    main = quiet_unless_rank0()
    from radio.distill.run import RunFolder
    from radio.distill.trainer import train_stage

    cfg = load(config, pipeline, store=store, out=out)
    log = _StepLog(sys.stderr.isatty()) if main else None
    result = train_stage(
        cfg, stage, steps=steps, init=init, workers=workers, device=device, flip=flip, on_step=log, each_step=False
    )
    if log is not None:
        log.close()
    if not main:  # under torchrun only rank 0 reports; the others say something only on error
        if result.end_step < result.total_steps and not result.stopped_by:
            raise typer.Exit(EXIT_FAILED)
        return
    where = RunFolder(result.run).stage(stage)
    if result.stopped_by:
        print(
            f"stage {stage}: stopped by {result.stopped_by} at step {result.end_step}/{result.total_steps}; "
            f"checkpoint written to {where.path}; re-run the same command to resume"
        )
        return
    final = where.weights
    if not result.losses:  # the trainer (re)writes the final weights of a complete checkpoint
        print(
            f"stage {stage} is already complete ({result.total_steps} steps); "
            + (f"weights {final}" if final.is_file() else "no final weights were written")
        )
        return
    first = f"{result.losses[0]:.4f}" if result.losses else "-"
    last = f"{result.losses[-1]:.4f}" if result.losses else "-"
    print(f"stage {stage}: steps {result.start_step}→{result.end_step}, loss {first} → {last}; weights {final}")
    if result.end_step < result.total_steps:
        raise typer.Exit(EXIT_FAILED)


def quiet_unless_rank0() -> bool:
    """True on rank 0 (or alone). On other torchrun ranks: Python warnings off and the root
    logger at ERROR, so N processes do not print N copies of the same lines."""
    import logging
    import os
    import warnings

    if int(os.environ.get("RANK", "0")) == 0:
        return True
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    return False


class _StepLog:
    """A progress bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, tty: bool, every: float = 10.0):
        self.tty, self.every, self.last = tty, every, 0.0
        self.bar = None

    def __call__(self, record: dict) -> None:
        if self.tty:
            if self.bar is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(
                    TextColumn("distill"),
                    BarColumn(),
                    TextColumn("step {task.completed}"),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TimeRemainingColumn(),
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task("distill", total=None, loss=0.0)
            self.bar.update(self.task, completed=record["step"], loss=record["total"])
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(
                f"distill: step {record['step']} loss {record['total']:.4f} lr {record['lr']:.2e} "
                f"{record['images_per_s']:.1f} images/s, data wait {record['data_wait']:.0%}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
