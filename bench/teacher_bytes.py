"""Bytes per image of every target key of a pipeline, from the real teachers' dims (no run).

fp16 = 2 bytes per value (what featurize writes), int8 = 1 byte (`radio store compact`, full
rank): features h × w × C plus the summary. Prints a Markdown table (README "Any teacher").

    .venv/bin/python bench/teacher_bytes.py --pipeline c-radio-v4-h
"""

from __future__ import annotations

import argparse

from radio.config import load_pipeline
from radio.featurize.job import provenance, select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="pipelines.yaml")
    ap.add_argument("--pipeline", default="c-radio-v4-h")
    args = ap.parse_args()
    config = load_pipeline(args.config, args.pipeline)
    print("| target key | features | summary | fp16 per image | int8 per image |")
    print("| --- | --- | --- | --- | --- |")
    for teacher, (_, _, jobs) in select(config).teachers.items():
        for job in jobs:
            p = provenance(config, teacher, job)
            values = p.grid[0] * p.grid[1] * p.feature_dim + (p.summary_dim or 0)
            features = f"{p.grid[0]}×{p.grid[1]}×{p.feature_dim}"
            summary = p.summary_dim or "-"
            print(f"| `{job.key}` | {features} | {summary} | {2 * values / 1e6:.2f} MB | {values / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
