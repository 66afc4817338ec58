"""`radio scan`: read every shard of the pipeline through the shard reader and count what is usable."""

from __future__ import annotations

from collections import Counter

from .console import make_console
from .errors import EXIT_FAILED, user_errors
from .options import DEFAULT_CONFIG, ConfigOpt, DataOpt, PipelineOpt, load


@user_errors
def scan(config: ConfigOpt = DEFAULT_CONFIG, pipeline: PipelineOpt = None, data: DataOpt = None) -> None:
    """Read the pipeline's shards (as featurize will) and print samples, valid ones and bad ones by reason."""
    import typer
    from rich.table import Table

    from radio.shards.images import REASONS, ImageLimits
    from radio.shards.tar import ShardReader, expand_shards

    cfg = load(config, pipeline, data)
    limits = ImageLimits(cfg.data.min_image_size, cfg.data.max_image_pixels)
    tars = expand_shards(cfg.data.shards)
    table = Table("tar", "samples", "valid", "bad (by reason)", title=f"{len(tars)} shards")
    total: Counter[str] = Counter()
    truncated = 0
    for tar in tars:
        reader = ShardReader(tar, limits)
        counts = Counter(s.reason or "valid" for s in reader)
        total += counts
        truncated += reader.truncated
        bad = ", ".join(f"{r} {counts[r]}" for r in REASONS if counts[r])
        note = f" [tar truncated: {reader.error}]" if reader.truncated else ""
        table.add_row(tar, str(sum(counts.values())), str(counts["valid"]), bad + note)
    bad = ", ".join(f"{r} {total[r]}" for r in REASONS if total[r])
    table.add_row("total", str(sum(total.values())), str(total["valid"]), bad, end_section=True)
    make_console().print(table)
    if truncated:
        raise typer.Exit(EXIT_FAILED)
