"""Issue 18: docs/deploy.md keeps one row per resource kind the stacks declare, saying which
controller or service acts on it, what it does on create, update and delete, what we rely on,
and the upstream source. The kinds come from the mock runs of every stack (not from a list
here): a stack that starts declaring a new kind fails until the table has its row."""
from __future__ import annotations

import re

from pulumi_harness import ROOT

HEADING = "## What each controller does"
COLUMNS = ["kind", "controller / service", "create", "update", "delete", "we rely on", "source"]
# A source names a repository (owner/name) or an AWS guide or API reference.
SOURCE = re.compile(r"([\w.-]+/[\w.-]+ .*`[^`]+`|user guide|API reference|`components/[\w/]+\.py`)")


def controller_table() -> dict[str, dict[str, str]]:
    """docs/deploy.md's controller table: Pulumi type token -> {column: text}."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert text.count(HEADING) == 1, f"docs/deploy.md needs one section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS, header
    rows: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(COLUMNS), line
        kinds = re.findall(r"`([^`]+)`", cells[0])
        assert len(kinds) == 1, f"one kind per row: {cells[0]}"
        assert kinds[0] not in rows, f"two rows for {kinds[0]}"
        rows[kinds[0]] = dict(zip(COLUMNS, cells))
    return rows


def declared_kinds(runs) -> dict[str, set[str]]:
    """Every resource kind a provider manages in the stacks' runs (not components or providers)."""
    kinds: dict[str, set[str]] = {}
    for stack, run in runs.items():
        for r in run.resources:
            if r.custom and not r.type.startswith("pulumi:providers:"):
                kinds.setdefault(r.type, set()).add(stack)
    return kinds


def test_every_declared_kind_has_a_row(stack_runs):
    rows = controller_table()
    missing = {kind: sorted(stacks) for kind, stacks in declared_kinds(stack_runs).items() if kind not in rows}
    assert not missing, f"docs/deploy.md '{HEADING}' has no row for {missing}"


def test_every_row_says_what_happens_and_cites_its_source():
    for kind, row in controller_table().items():
        for column in COLUMNS:
            assert row[column] and row[column] not in ("-", "?"), (kind, column)
        assert SOURCE.search(row["source"]), (kind, row["source"])


def test_the_table_check_can_fail(stack_runs):
    """A kind the table lacks is reported (the check reads the runs, not a list of its own)."""
    runs = {"x": stack_runs["prod"]}
    rows = controller_table()
    assert set(declared_kinds(runs)) <= set(rows)
    rows.pop("pulumi-python:dynamic/servedmodel:RolloutWait")
    assert "pulumi-python:dynamic/servedmodel:RolloutWait" in set(declared_kinds(runs)) - set(rows)
