"""Links and section references lead somewhere: every relative Markdown link of README.md and
docs/ resolves (file, and #anchor by GitHub's slug rules), every textual reference to a section of
one of our documents (`docs/X.md, "Section"`, `(X.md, "Section")`, `X.md, section 3`) in the
documents, the Python sources and the other tracked text files names a heading that exists, and
every repository file a document or source names by its path exists."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import docsource
from docsource import ROOT, github_slug, names_a_section, references


def test_github_slugs() -> None:
    """GitHub's rules (github-slugger), on headings of this repository's kind."""
    for heading, anchor in [
        ("Sharing a GPU (`servedmodel:gpuShare`, `gpuMemory`)", "sharing-a-gpu-servedmodelgpushare-gpumemory"),
        ("Promoting, aborting and rolling back — by config", "promoting-aborting-and-rolling-back--by-config"),
        ("What `pulumi up` reports", "what-pulumi-up-reports"),
        ("Switching the autoscaler (`hpa` ↔ `keda`) in one `up`", "switching-the-autoscaler-hpa--keda-in-one-up"),
        ("1b. The distribution and the component provider", "1b-the-distribution-and-the-component-provider"),
        ("The [HTTP/2](x.md) layer of **gRPC**", "the-http2-layer-of-grpc"),
        ("snake_case stays", "snake_case-stays"),
    ]:
        assert github_slug(heading) == anchor


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("# A\n## Notes\n```bash\n# Notes\n```\n## Notes\n## Notes\n")
    assert docsource.anchors(doc) == ["a", "notes", "notes-1", "notes-2"]  # not the comment in the block


def test_relative_links_resolve() -> None:
    problems = []
    count = 0
    for doc in docsource.documents():
        for line, target in docsource.links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            count += 1
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            where = f"{docsource.rel(doc)}:{line}: ({target})"
            if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
                problems.append(f"{where}: no file {path}")
            elif anchor:
                if resolved.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not Markdown")
                elif anchor not in docsource.anchors(resolved):
                    problems.append(f"{where}: {docsource.rel(resolved)} has no heading with the anchor #{anchor}")
    assert count > 20, "too few relative links found: the link parser broke"
    assert problems == []


def test_section_references_find_every_form(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        '"""See docs/protocol.md, "Limits", and (pipeline.md, "The quality gate")."""\n'
        '# the cap (docs/deploy.md "Sharing a\n# GPU"); docs/architecture.md, sections 1 and 2; image.md §2\n'
        'TEXT = "... (docs/deploy.md, " "prerequisites) ..."\n'
        'PATH = ROOT / "docs" / "deploy.md"; README.md "Catalog of Labels" is another project\'s\n'
        'URL = "docs/config.md#stack-configuration-reference"\n')
    found = [(r.line, docsource.rel(r.document), r.title, r.numbers, r.anchor) for r in references(source)]
    assert found == [
        (1, "docs/protocol.md", "Limits", (), ""),
        (1, "docs/pipeline.md", "The quality gate", (), ""),
        (2, "docs/deploy.md", "Sharing a GPU", (), ""),
        (3, "docs/architecture.md", "", ("1", "2"), ""),
        (3, "docs/image.md", "", ("2",), ""),
        (6, "docs/config.md", "", (), "stack-configuration-reference"),
    ]


def test_section_references_name_existing_headings() -> None:
    """A quoted name is a heading's text, or its short title (before ' (', ': ' or ' — '),
    ignoring case, backticks and a section number; `section N` / `§N` is a numbered heading."""
    problems = []
    found = [ref for source in docsource.referencing_sources() for ref in references(source)]
    for ref in found:
        doc = docsource.rel(ref.document)
        if ref.title and not names_a_section(ref.title, ref.document):
            problems.append(f"{ref.where}: {ref.text}: {doc} has no heading {ref.title!r}")
        for number in ref.numbers:
            if number not in docsource.numbered_sections(ref.document):
                problems.append(f"{ref.where}: {ref.text}: {doc} has no section {number}")
        if ref.anchor and ref.anchor not in docsource.anchors(ref.document):
            problems.append(f"{ref.where}: {ref.text}: {doc} has no heading with the anchor #{ref.anchor}")
    assert len(found) > 40, "too few section references found: the reference parser broke"
    assert problems == []


# Folders of this repository whose files the documents and sources name by path. (`docs/`,
# `provider/` and `policy/` are left out: upstream projects' paths, such as pulumi-kubernetes'
# provider/pkg/... or the load balancer controller's docs/guide/..., begin the same way.)
PATH_ROOTS = ("models", "serving", "components", "tests", "bench", "examples", "stacks", ".ci", ".github")
_PATH = re.compile(rf"(?<![\w/.-])(?P<path>(?:{'|'.join(re.escape(r) for r in PATH_ROOTS)})/[\w./-]*\w\.[a-z]{{1,5}})"
                   r"(?:::(?P<name>\w+))?(?P<at>`? at [0-9a-f]{7,40}\b)?")


def test_repository_paths_named_in_documents_and_sources_exist() -> None:
    """`serving/h2c.py` once stayed named in three places after serving/h2/ replaced it. A path
    `at <commit>` names history and is not checked; a path git ignores is a generated file
    (examples/tagger/tagger.pt). Tests are not read: they name files they create."""
    sources = [s for s in docsource.referencing_sources() if not docsource.rel(s).startswith("tests/")]
    named: dict[str, list[str]] = {}
    for source in sources:
        text = source.read_text(errors="replace")
        for m in _PATH.finditer(text):
            if m["at"]:
                continue
            where = f"{docsource.rel(source)}:{text.count(chr(10), 0, m.start()) + 1}"
            named.setdefault(m["path"], []).append(where)
            definition = rf"^\s*(?:async )?(?:def|class) {m['name']}\b"
            if m["name"] and (ROOT / m["path"]).is_file() and \
                    not re.search(definition, (ROOT / m["path"]).read_text(), re.MULTILINE):
                named.setdefault(f"{m['path']}::{m['name']}", []).append(where)
    missing = {p: w for p, w in named.items() if "::" in p or not (ROOT / p).exists()}
    files = "\n".join(p for p in missing if "::" not in p)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, capture_output=True,
                             check=False, text=True, input=files).stdout.split()
    missing = {p: w for p, w in missing.items() if p not in ignored}
    assert len(named) > 50, "too few paths found: the path parser broke"
    assert missing == {}
