"""The commands the README and docs/ show parse, and none of them overwrites a bundled checkpoint."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from training.cli import parser
from training.config import load_config

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
BUNDLED = PROJECT_ROOT / "checkpoints"


def commands(prefix: str) -> list[tuple[str, str]]:
    """(page, command line) for every line of a fenced block in the pages that starts with `prefix`."""
    found = []
    for page in PAGES:
        inside = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                inside = not inside
            elif inside and line.startswith(prefix):
                found.append((page.name, line.split("  #")[0].strip()))
    return found


def writes_into_bundled(path: str) -> bool:
    return (PROJECT_ROOT / path).resolve().is_relative_to(BUNDLED.resolve())


TRAIN = commands("ganforge train ")
CLASSIFIER = commands("ganforge train-classifier")


def test_the_pages_show_training_commands():
    assert len(TRAIN) >= 3 and CLASSIFIER


@pytest.mark.parametrize("page,line", TRAIN, ids=[f"{p}:{l[15:70]}" for p, l in TRAIN])
def test_documented_train_commands_parse_and_export_outside_checkpoints(page, line):
    args = parser().parse_args(shlex.split(line)[1:])
    cfg = load_config(PROJECT_ROOT / args.config, args.set)
    assert not writes_into_bundled(cfg.export), f"{page}: `{line}` would overwrite {cfg.export}"
    assert not writes_into_bundled(cfg.workdir)


@pytest.mark.parametrize("page,line", CLASSIFIER, ids=[f"{p}:{l[26:70]}" for p, l in CLASSIFIER])
def test_documented_train_classifier_commands_write_outside_checkpoints(page, line):
    args = parser().parse_args(shlex.split(line)[1:])
    assert not writes_into_bundled(args.out), f"{page}: `{line}` would overwrite {args.out}"


def test_documented_commands_of_every_surface_parse():
    """Each `ganforge ...` line in a fenced block is accepted by the CLI's parser (flags and choices)."""
    lines = commands("ganforge ")
    assert {shlex.split(l)[1] for _, l in lines} >= {"train", "sample", "evaluate", "augment", "translate"}
    for page, line in lines:
        argv = shlex.split(re.sub(r"\s\|.*$", "", line))[1:]  # a pipe into another program ends the command
        try:
            parser().parse_args(argv)
        except SystemExit as e:  # argparse's way of refusing
            if e.code:
                pytest.fail(f"{page}: `{line}` does not parse")
