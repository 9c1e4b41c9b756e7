"""Reading the Markdown of README.md and docs/: fenced blocks with their run markers, headings
and GitHub's anchors for them, links, and textual section references (`docs/X.md, "Section"`).

The marker grammar (`test_doc_commands.py` runs the blocks by it):

A shell block (```bash, ```sh, ```shell, ```console) or a Python block (```python) is run as
written unless the line right before its opening fence is one of these HTML comments (invisible on
GitHub):

    <!-- not run: REASON -->
        never run; REASON (at least two words) says what it needs that the test has not (a cloud,
        a cluster, the Pulumi CLI, a GPU, ...) and, where one exists, which test covers it.
    <!-- run: in the background until HOST:PORT is ready[, HOST:PORT listening] -->
        the block starts a server that runs in the foreground: it is started in the background,
        `GET http://HOST:PORT/v2/health/ready` must answer 200 (each further HOST:PORT must accept
        connections) while it runs, and it keeps serving for the document's next blocks until a
        block needs its port or the document ends.
    <!-- run: with MODEL served at HOST:PORT -->
        the block talks to a server that serves the zoo model MODEL at HOST:PORT: the server an
        earlier block of the same document left running there, which must answer for MODEL, or
        else one the test builds and starts there (`python -m models build`, `python -m serving`).
        Every request the block makes must be answered below 400 (read from the access log).
    <!-- run: as a Pulumi program under the test's mocks -->
        a Python block that is a whole Pulumi program: it runs under Pulumi's unit-test mocks
        (tests/components/pulumi_harness.py) with the config `<project>:kubeconfig` set (a secret),
        and must declare a `servedmodel:index:ServedModel`.
    <!-- file: PATH -->
        the block is the listing of the repository file PATH and must equal it.

Any other comment right before a fence, a marker elsewhere, or a marker without a reason is an
error; so is an unlabelled block that starts with a command (label it).
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHELL = ("bash", "sh", "shell", "console")
PYTHON = ("python", "py")
COMMAND_WORDS = ("python", "python3", "make", "curl", "pip", "pulumi", "kubectl", "docker", "helm", "$ ")

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_HEADING = re.compile(r"^ {0,3}(?P<hashes>#{1,6})[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")


def documents() -> list[Path]:
    """README.md and every Markdown file in docs/, README first."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass(frozen=True)
class Block:
    path: Path
    line: int            # 1-based line of the opening fence
    lang: str            # the info string's first word, lowercased ("" when none)
    text: str            # the content, de-indented to the fence's indentation
    marker: str | None  # the body of the HTML comment on the line before the fence, if any

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"

    @property
    def kind(self) -> str:
        return "shell" if self.lang in SHELL else "python" if self.lang in PYTHON else "other"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file (CommonMark fences, also indented under list items)."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        previous = lines[start - 1] if start > 0 else ""
        marker = _MARKER.match(previous)
        found.append(Block(path, start + 1, (m["info"].strip().split() or [""])[0].lower(),
                           "\n".join(body) + "\n", marker["body"] if marker else None))
    return found


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced blocks."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m["fence"]
            continue
        if fence is not None:
            if re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
            continue
        out.append((n, line))
    return out


# --- markers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    action: str                  # "run", "not run", "file"
    mode: str = "plain"          # run: "plain", "background", "served", "pulumi"
    reason: str = ""             # not run
    model: str = ""              # served
    addresses: tuple[tuple[str, int], ...] = ()  # background: first probed for readiness; served: one
    path: str = ""               # file


_ADDRESS = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3}|localhost):(\d{2,5})\b")


class MarkerError(ValueError):
    pass


def parse_marker(body: str | None) -> Marker:
    """The marker of a block (None: a plain run). Raises MarkerError naming what is wrong."""
    if body is None:
        return Marker("run")
    head, sep, rest = body.partition(":")
    head, rest = head.strip().lower(), rest.strip()
    if not sep:
        raise MarkerError(f"<!-- {body} --> is not a marker: expected 'not run: REASON', 'run: ...' or 'file: PATH'")
    if head == "not run":
        if len(rest.split()) < 2:
            raise MarkerError(f"<!-- {body} -->: 'not run' needs a reason (what the block needs that the test has not)")
        return Marker("not run", reason=rest)
    if head == "file":
        if not rest or not (ROOT / rest).is_file():
            raise MarkerError(f"<!-- {body} -->: no file {rest!r} in the repository")
        return Marker("file", path=rest)
    if head == "run":
        addresses = tuple((h, int(p)) for h, p in _ADDRESS.findall(rest))
        if re.fullmatch(r"in the background until \S+ is ready(, \S+ listening)*", rest) and addresses:
            return Marker("run", mode="background", addresses=addresses)
        served = re.fullmatch(r"with (?P<model>[A-Za-z0-9_.-]+) served at (?P<addr>\S+)", rest)
        if served and len(addresses) == 1:
            return Marker("run", mode="served", model=served["model"], addresses=addresses)
        if rest == "as a Pulumi program under the test's mocks":
            return Marker("run", mode="pulumi")
        raise MarkerError(f"<!-- {body} -->: unknown run marker; expected 'run: in the background until "
                          "HOST:PORT is ready', 'run: with MODEL served at HOST:PORT' or "
                          "'run: as a Pulumi program under the test's mocks'")
    raise MarkerError(f"<!-- {body} -->: unknown marker {head!r}; expected 'not run', 'run' or 'file'")


def looks_like_marker(body: str) -> bool:
    return bool(re.match(r"\s*(not run|run|file)\s*:", body, re.IGNORECASE))


# --- headings and anchors --------------------------------------------------------------------

def plain_text(markdown: str) -> str:
    """A heading's text as GitHub renders it: code spans without backticks, links as their text,
    emphasis and HTML tags removed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"(`+)(.+?)\1", lambda m: m[2].strip(), text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])[*_](?!\s)(.+?)(?<!\s)[*_](?![\w*])", r"\1", text)
    return text


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): lowercased, every character that is not a
    letter, mark, number, connector punctuation (`_`), `-` or a space removed, spaces -> `-`."""
    kept = "".join(ch for ch in plain_text(heading).lower()
                   if ch in " -" or unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc")
    return kept.replace(" ", "-")


def headings(path: Path) -> list[tuple[int, int, str]]:
    """(line, level, raw text) of every ATX heading outside fenced blocks."""
    out = []
    for n, line in prose_lines(path):
        m = _HEADING.match(line)
        if m:
            out.append((n, len(m["hashes"]), m["text"]))
    return out


def anchors(path: Path) -> list[str]:
    """The anchors GitHub gives the headings of a file, in order (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = []
    for _, _, text in headings(path):
        slug = github_slug(text)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        out.append(slug)
    return out


def section_titles(path: Path) -> dict[str, str]:
    """The names a textual reference may give a heading, lowercased -> the heading: its plain
    text, and its short title (the text before ' (', ': ' or ' — ')."""
    names: dict[str, str] = {}
    for _, _, text in headings(path):
        plain = re.sub(r"^\d+[a-z]?\.\s+", "", plain_text(text).strip())  # `## 2. The build context`
        for name in (plain, re.split(r" \(|: | — ", plain, maxsplit=1)[0]):
            names.setdefault(name.lower(), text)
    return names


def names_a_section(title: str, path: Path) -> bool:
    """Whether a quoted section name is one of `path`'s headings (section_titles)."""
    return plain_text(" ".join(title.split())).lower() in section_titles(path)


def numbered_sections(path: Path) -> set[str]:
    """The numbers of a file's numbered headings (`## 1a. ...` -> "1a")."""
    return {m[1] for _, _, text in headings(path) if (m := re.match(r"(\d+[a-z]?)\.\s", text))}


# --- links -----------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target><[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"(`+).+?\1")


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link and image in the prose (not in code spans or blocks)."""
    out = []
    for n, line in prose_lines(path):
        for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
            out.append((n, m["target"].strip("<>")))
    return out


# --- textual references to a section of a document -------------------------------------------

def our_documents() -> dict[str, Path]:
    """The names a reference may give a document: `docs/X.md` and `X.md` for docs/, `README.md`."""
    names = {"README.md": ROOT / "README.md"}
    for path in sorted((ROOT / "docs").glob("*.md")):
        names[f"docs/{path.name}"] = path
        names.setdefault(path.name, path)
    return names


_GAP = r"(?:\s|\\n|#(?=\s))*"   # spaces, line breaks, and a comment's `#` where a reference wraps in code
_REFERENCE = re.compile(
    r"(?<![\w/.-])(?P<file>(?:docs/)?[A-Za-z0-9_-]+\.md)(?![\w/-])"
    rf"(?:(?:,{_GAP}|\s{_GAP}\(?{_GAP}|\({_GAP})[\"“](?P<title>[^\s\"”][^\"”\n]*(?:\n[^\"”\n]*)?)[\"”]"
    rf"|,?{_GAP}(?:sections?|§){_GAP}(?P<numbers>\d+[a-z]?(?:{_GAP}(?:,|and|&){_GAP}\d+[a-z]?)*)"
    r"|#(?P<anchor>[\w-]+))")


@dataclass(frozen=True)
class Reference:
    source: Path
    line: int
    document: Path
    text: str                 # as written
    title: str = ""           # a heading's name, quoted
    numbers: tuple[str, ...] = ()  # numbered sections (`section 3`, `§2`)
    anchor: str = ""          # `X.md#anchor` written out as text

    @property
    def where(self) -> str:
        return f"{rel(self.source)}:{self.line}"


def references(source: Path) -> list[Reference]:
    """The references to a section of one of our documents that `source` makes in its text
    (Markdown prose, comments, docstrings, strings): `docs/X.md, "Section"`, `(X.md, "Section")`,
    `docs/X.md ("Section")`, `docs/X.md "Section"`, `X.md, section 3`, `X.md §2`, `X.md#anchor`."""
    text = source.read_text(errors="replace")
    documents = our_documents()
    out = []
    for m in _REFERENCE.finditer(text):
        if m["file"] not in documents or (m["file"] == "README.md" and source.suffix != ".md"):
            continue  # in code, a bare README.md is another project's
        line = text.count("\n", 0, m.start()) + 1
        title = re.sub(r"\s*\n\s*#?\s*", " ", m["title"]).strip() if m["title"] is not None else ""
        numbers = tuple(re.findall(r"\d+[a-z]?", m["numbers"])) if m["numbers"] else ()
        out.append(Reference(source, line, documents[m["file"]], " ".join(m[0].split()), title, numbers,
                             m["anchor"] or ""))
    return out


def referencing_sources() -> list[Path]:
    """Where references are looked for: README, docs/, and every tracked text source (Python,
    YAML, TOML, the Makefile, requirements, shell)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    suffixes = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".ini"}
    return [ROOT / p for p in sorted(set(listed))
            if (Path(p).suffix in suffixes or Path(p).name in ("Makefile", "run")) and (ROOT / p).is_file()
            and not p.startswith(("tests/crds/", "tests/docs/"))]  # upstream files; these checks' own examples
