"""docs/settings.md cannot drift from service/config.py: every setting documented once, with its variable, default and range."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from service.config import Settings
from tests.conftest import PROJECT_ROOT

SETTINGS_MD = PROJECT_ROOT / "docs" / "settings.md"
FIELDS = [f.name for f in dataclasses.fields(Settings)]


class Row(NamedTuple):
    variable: str
    field: str
    default: str  # as the variable would spell it
    allowed: str


def settings_rows() -> list[Row]:
    """The rows of the settings table: | `GANFORGE_X` | `field` | default | allowed | meaning |."""
    rows = []
    for line in SETTINGS_MD.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`GANFORGE_"):
            continue
        default = "" if cells[2].startswith("(empty") else re.match(r"`([^`]*)`", cells[2]).group(1)
        rows.append(Row(cells[0].strip("`"), cells[1].strip("`"), default, cells[3]))
    return rows


ROWS = settings_rows()


def spelled(value) -> str:
    """A Settings value as its environment variable spells it."""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def int_range(row: Row) -> tuple[int, int] | None:
    m = re.fullmatch(r"`(\d+)\.\.(\d+)`", row.allowed)
    return (int(m.group(1)), int(m.group(2))) if m else None


def choices(row: Row) -> list[str] | None:
    return re.findall(r"`([^`]+)`", row.allowed) if row.allowed.startswith("one of ") else None


def test_every_setting_is_documented_once_and_nothing_else():
    assert len(ROWS) >= 10, "the settings table was not found in docs/settings.md"
    assert sorted(r.field for r in ROWS) == sorted(FIELDS)
    assert len({r.variable for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.variable)
def test_documented_default_is_the_code_default(row):
    assert spelled(getattr(Settings.from_env({}), row.field)) == row.default
    assert spelled(getattr(Settings(), row.field)) == row.default


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.variable)
def test_documented_variable_sets_its_field_and_only_it(row):
    """A valid non-default value of the variable changes exactly the documented field."""
    if int_range(row):
        low, high = int_range(row)
        probe = str(int(row.default) + 1 if int(row.default) < high else low)
    else:
        probe = next(v for v in re.findall(r"`([^`]+)`", row.allowed) if v != row.default)
    base, changed = Settings.from_env({}), Settings.from_env({row.variable: probe})
    assert {f for f in FIELDS if getattr(changed, f) != getattr(base, f)} == {row.field}
    assert spelled(getattr(changed, row.field)) == probe


@pytest.mark.parametrize("row", [r for r in ROWS if int_range(r)], ids=lambda r: r.variable)
def test_documented_range_is_the_checked_range(row):
    low, high = int_range(row)
    for ok in (low, high):
        assert getattr(Settings.from_env({row.variable: str(ok)}), row.field) == ok
    for bad in (low - 1, high + 1):
        with pytest.raises(ValueError, match=row.variable):
            Settings.from_env({row.variable: str(bad)})


@pytest.mark.parametrize("row", [r for r in ROWS if choices(r)], ids=lambda r: r.variable)
def test_documented_choices_are_the_checked_choices(row):
    for value in choices(row):
        Settings.from_env({row.variable: value})
    with pytest.raises(ValueError, match=row.variable):
        Settings.from_env({row.variable: "no-such-value"})


def test_no_undocumented_variable_is_read():
    """Every GANFORGE_* name the packages mention is a documented setting."""
    documented = {r.variable for r in ROWS}
    mentioned = set()
    for package in ("models", "augment", "training", "service", "backends"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            mentioned |= set(re.findall(r"\bGANFORGE_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    assert mentioned - documented == set()
