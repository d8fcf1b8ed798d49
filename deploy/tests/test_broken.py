"""A deliberately broken copy of each artifact kind fails its check, with a message that says what is wrong.

Each test copies the real artifact, breaks one thing in the copy and runs the same `deploy/validate.py` check that
deploy/check.sh runs. An unbroken copy of each kind is checked once first, so each failure comes from the one edit.
"""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DEPLOY, copy_tree, edit, run_validator


def assert_fails(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"the broken copy passed:\n{output}"
    for text in expected:
        assert text in output, f"{text!r} not in the check's output:\n{output}"


def assert_passes(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"the unbroken copy fails:\n{done.stdout}{done.stderr}"


_PRISTINE_CHECKED: set[str] = set()


def pristine_copy(kind: str, source: Path, tmp_path: Path, flag: str = "--dir") -> Path:
    """A copy of `source`; the first copy of each kind is checked to pass unbroken."""
    copy = copy_tree(source, tmp_path / source.name)
    if kind not in _PRISTINE_CHECKED:
        assert_passes(run_validator(kind, flag, copy))
        _PRISTINE_CHECKED.add(kind)
    return copy


# --- one edit, one failing check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """Replace `old` by `new` in `file` of a copy of the artifact `kind`; its check must fail and say `expected`."""

    name: str
    kind: str
    file: str
    old: str
    new: str
    expected: tuple[str, ...]


# Each kind: where its artifact lives and the flag that points deploy/validate.py at a copy.
SOURCES = {
    "chart": (DEPLOY / "helm" / "molt", "--chart"),
    "monitoring": (DEPLOY / "monitoring", "--dir"),
    "fly": (DEPLOY / "fly", "--dir"),
    "compose": (DEPLOY / "compose", "--dir"),
    "images": (DEPLOY / "docker", "--dir"),
}

# The table of one-edit breakages, as data.
BREAKS = [
    Break(**{**case, "expected": tuple(case["expected"])})
    for case in tomllib.loads((Path(__file__).parent / "broken.toml").read_text())["case"]
]


def broken_copy(kind: str, tmp_path: Path) -> tuple[Path, str]:
    source, flag = SOURCES[kind]
    return pristine_copy(kind, source, tmp_path, flag), flag


@pytest.mark.parametrize("case", BREAKS, ids=[b.name.replace(" ", "-") for b in BREAKS])
def test_a_broken_copy_fails_its_check(case: Break, tmp_path: Path) -> None:
    copy, flag = broken_copy(case.kind, tmp_path)
    edit(copy / case.file, case.old, case.new)
    assert_fails(run_validator(case.kind, flag, copy), *case.expected)


# --- edits that are not one replacement -----------------------------------------------------------------------------


def test_an_alert_without_a_unit_test_fails(tmp_path: Path) -> None:
    monitoring, flag = broken_copy("monitoring", tmp_path)
    rules = monitoring / "rules" / "molt-alerts.yaml"
    untested = "      - alert: MoltUntested\n        expr: molt_cp_connected_dataplanes > 100\n"
    rules.write_text(rules.read_text() + untested + "        labels:\n          severity: ticket\n")
    assert_fails(run_validator("monitoring", flag, monitoring), "alerts without a promtool unit test", "MoltUntested")


def test_a_stale_generated_dashboard_fails_the_up_to_date_check(tmp_path: Path) -> None:
    # The generator's --check compares the repository's files; run it against a copy of the generator whose output
    # would differ from the committed dashboards.
    copy = copy_tree(DEPLOY / "monitoring", tmp_path / "deploy" / "monitoring")
    copy_tree(DEPLOY / "helm" / "molt" / "files", tmp_path / "deploy" / "helm" / "molt" / "files")
    edit(copy / "generate.py", '"Active streams"', '"Streams being proxied"')
    done = subprocess.run(["python3", copy / "generate.py", "--check"], capture_output=True, text=True)
    assert_fails(done, "out of date", "molt-dataplane.json")


def test_a_secret_with_a_default_in_compose_fails(tmp_path: Path) -> None:
    compose, flag = broken_copy("compose", tmp_path)
    text = (compose / "compose.yaml").read_text()
    (compose / "compose.yaml").write_text(text.replace(":?set ", ":-").replace(" in .env}", "}"))
    assert_fails(run_validator("compose", flag, compose), "does not require its secrets")
