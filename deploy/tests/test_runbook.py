"""The runbook covers every alert (each alert's `runbook` annotation points at a heading of deploy/README.md), and
the README's quick start links it."""

from __future__ import annotations

import re

import yaml
from conftest import DEPLOY, REPO


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for line in markdown.splitlines():
        if match := re.match(r"#+ (.+)", line):
            found.add(re.sub(r"[^a-z0-9 _-]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return found


def test_every_alert_links_a_section_of_the_runbook() -> None:
    runbook = anchors((DEPLOY / "README.md").read_text())
    for path in sorted((DEPLOY / "monitoring" / "rules").glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                link = rule["annotations"]["runbook"]
                assert link.startswith("deploy/README.md#"), (rule["alert"], link)
                assert link.split("#", 1)[1] in runbook, f"{rule['alert']}: no heading for {link} in deploy/README.md"
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]


def test_the_quick_start_links_the_runbook() -> None:
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "(deploy/README.md)" in quick_start
