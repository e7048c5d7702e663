"""The ``posewatch`` command line (typer)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from detector.datasets import DatasetError, load_split, splits, summarize
from detector.posefiles import PoseFileError
from pipelines import __version__

app = typer.Typer(
    name="posewatch",
    help="Pose-based video anomaly detection: cameras in, alerts out.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect pose datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the posewatch version."""
    typer.echo(__version__)


@data_app.command("summary")
def data_summary(
    path: Annotated[Path, typer.Argument(help="Dataset folder holding pose/<split>/ and gt/.")],
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Only these splits (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per split: clips, person tracks, person-frames, label frames, anomalous fraction."""
    try:
        names = split or splits(path)
        rows = [summarize(s, load_split(path, s)) for s in names]
    except (DatasetError, PoseFileError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps({r.split: asdict(r) for r in rows}, indent=2))
        return
    header = f"{'split':<8}{'clips':>7}{'tracks':>8}{'person-frames':>15}{'label frames':>14}"
    header += f"{'anomalous':>11}"
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r.split:<8}{r.clips:>7,}{r.tracks:>8,}{r.person_frames:>15,}{r.label_frames:>14,}"
            f"{r.anomalous_fraction:>10.1%}"
        )


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
