"""The package's specification citations are true: every ``##=`` / ``##%`` block names a section
of the excerpt in docs/spec/ and quotes it word for word (docs/spec/README.md).

The form is the official clients' (duvet's): ``##= <path>#<anchor>``, optional ``##= type=...``
and ``##= reason=...`` lines, then ``##%`` lines holding the quote, wrapped at spaces.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "keymigration"
SPEC = ROOT / "docs" / "spec"
TYPES = {"implementation", "implication", "citation", "exception", "test", "todo"}
HEADER = '[//]: # "excerpt:'


@dataclass
class Citation:
    where: str  # file:line of the ##= line
    target: str  # <path>#<anchor>
    type: str = "implementation"
    reason: str = ""
    quote: str = ""


def normalize(text: str) -> str:
    return " ".join(text.split())


def slug(heading: str) -> str:
    """A heading's anchor as duvet and the official clients write it."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def parse(text: str, name: str) -> tuple[list[Citation], list[str]]:
    """The citations in ``text`` and the problems of form found on the way."""
    citations: list[Citation] = []
    problems: list[str] = []
    current: Citation | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        where = f"{name}:{number}"
        if stripped.startswith("##="):
            value = stripped[3:].strip()
            if value.startswith(("type=", "reason=")):
                if current is None or current.quote:
                    problems.append(f"{where}: {value.split('=')[0]}= belongs right after a ##= target line")
                elif value.startswith("type="):
                    current.type = value[5:]
                else:
                    current.reason = value[7:]
                continue
            current = Citation(where, value)
            citations.append(current)
        elif stripped.startswith("##%"):
            if current is None:
                problems.append(f"{where}: ##% quote without a ##= target")
                continue
            current.quote = f"{current.quote} {stripped[3:].strip()}".strip()
        else:
            current = None
    for c in citations:
        if not c.quote:
            problems.append(f"{c.where}: {c.target} quotes nothing")
        if c.type not in TYPES:
            problems.append(f"{c.where}: unknown type={c.type}")
        if c.type == "exception" and not c.reason:
            problems.append(f"{c.where}: type=exception needs a ##= reason=... line")
    return citations, problems


def upstream_text(path: Path) -> str:
    """The specification file below its excerpt header lines."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    body = [line for line in lines if not line.startswith(HEADER)]
    assert len(lines) - len(body) == 3 and all(line.startswith(HEADER) for line in lines[:3]), f"{path}: header"
    return "".join(body)


@lru_cache(maxsize=None)
def sections(path: Path) -> dict[str, list[str]]:
    """anchor -> the normalized text of each section with that anchor (up to the next heading)."""
    found: dict[str, list[str]] = {}
    anchor, lines, fenced = None, [], False

    def close():
        if anchor is not None:
            found.setdefault(anchor, []).append(normalize("\n".join(lines)))

    for line in upstream_text(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if heading:
            close()
            anchor, lines = slug(heading.group(1)), []
        else:
            lines.append(line)
    close()
    return found


def check(citation: Citation, root: Path = ROOT) -> str | None:
    """Why this citation is wrong, or None."""
    path_text, _, anchor = citation.target.partition("#")
    if not anchor:
        return f"{citation.where}: {citation.target!r} names no section (#anchor)"
    path = (root / path_text).resolve()
    if not path_text.startswith("docs/spec/") or not path.is_file():
        return f"{citation.where}: {path_text!r} is not a file of the excerpt in docs/spec/"
    texts = sections(path).get(anchor)
    if texts is None:
        return f"{citation.where}: {path_text} has no section #{anchor}"
    quote = normalize(citation.quote)
    if not any(quote in text for text in texts):
        return f"{citation.where}: the quote is not in {path_text}#{anchor}: {citation.quote!r}"
    return None


def package_citations() -> tuple[list[Citation], list[str]]:
    citations, problems = [], []
    for source in sorted(PACKAGE.rglob("*.py")):
        found, wrong = parse(source.read_text(encoding="utf-8"), str(source.relative_to(ROOT)))
        citations += found
        problems += wrong
    return citations, problems


def test_every_citation_quotes_the_section_it_names():
    citations, problems = package_citations()
    problems += [p for p in (check(c) for c in citations) if p]
    assert not problems, "\n".join(problems)
    # The walk found them all: each layer that implements the specification cites it.
    cited = {c.where.split(":")[0] for c in citations}
    for module in ("formats/envelope.py", "formats/content.py", "formats/vocabulary.py", "migrate/rewrap.py",
                   "migrate/reader.py", "migrate/cutover.py", "aws/kms.py"):
        assert f"operator/keymigration/{module}" in cited, module
    assert len(citations) >= 50


def test_informal_spec_comments_are_gone():
    """Requirements are quoted in the checked form, not paraphrased after 'spec:'."""
    for layer in ("formats", "aws", "migrate"):
        for source in (PACKAGE / layer).rglob("*.py"):
            assert not re.search(r"\bspec:", source.read_text(encoding="utf-8")), source


def test_the_excerpt_is_the_upstream_text():
    readme = (SPEC / "README.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `(s3-encryption/[^`]+)` \| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))
    files = {str(p.relative_to(SPEC)) for p in SPEC.rglob("*.md") if p.name != "README.md"}
    assert set(recorded) == files and len(files) == 8
    for name, digest in recorded.items():
        assert hashlib.sha256(upstream_text(SPEC / name).encode("utf-8")).hexdigest() == digest, name


# -- the checker itself -------------------------------------------------------------------------

GOOD = """
x = 1
    ##= docs/spec/s3-encryption/data-format/content-metadata.md#determining-s3ec-object-status
    ##= type=implication
    ##% If the object matches none of the V1/V2/V3 formats,
    ##% the S3EC MUST attempt to get the instruction file.
def f(): pass
"""


def verdicts(text: str) -> list[str]:
    citations, problems = parse(text, "example.py")
    return problems + [p for p in (check(c) for c in citations) if p]


def test_the_checker_accepts_a_true_citation_wrapped_over_lines():
    citations, problems = parse(GOOD, "example.py")
    assert problems == [] and len(citations) == 1
    assert citations[0].type == "implication" and citations[0].where == "example.py:3"
    assert check(citations[0]) is None


@pytest.mark.parametrize(
    "change, complaint",
    [
        (("get the instruction file", "get the metadata file"), "the quote is not in"),  # altered quote
        (("attempt to get", "attempt  to\tget"), None),  # white space is not a difference
        (("MUST attempt", "SHOULD attempt"), "the quote is not in"),  # a changed requirement level
        (("#determining-s3ec-object-status", "#content-metadata-mapkeys"), "the quote is not in"),  # wrong section
        (("#determining-s3ec-object-status", "#determining-the-status"), "has no section"),
        (("#determining-s3ec-object-status", ""), "names no section"),
        (("content-metadata.md", "content-metadata-v9.md"), "is not a file of the excerpt"),
        (("docs/spec/s3-encryption/", "docs/"), "is not a file of the excerpt"),
        (("type=implication", "type=implemented"), "unknown type=implemented"),
        (("type=implication", "type=exception"), "needs a ##= reason"),
    ],
)
def test_the_checker_rejects_what_is_not_in_the_specification(change, complaint):
    found = verdicts(GOOD.replace(*change))
    if complaint is None:
        assert found == []
    else:
        assert len(found) == 1 and complaint in found[0], found


def test_the_checker_rejects_malformed_blocks():
    assert "without a ##= target" in verdicts("# text\n##% a quote alone\n")[0]
    assert "quotes nothing" in verdicts("##= docs/spec/s3-encryption/decryption.md#key-commitment\nx = 1\n")[0]
    late_type = GOOD.replace("    ##= type=implication\n", "") + "    ##= type=test\n"
    assert any("belongs right after" in p for p in verdicts(late_type.replace("def f(): pass\n", "")))


def test_a_quote_spanning_two_sections_is_refused():
    # The last sentence of one section and the first of the next: each is quotable alone, not both.
    end = "In the V1/V2 message format, all of the content metadata MUST be stored in the Instruction File."
    start = "In the V3 message format, only the content metadata related to the encrypted data is stored in the Instruction File."
    target = "docs/spec/s3-encryption/data-format/metadata-strategy.md#v1-v2-instruction-files"
    assert verdicts(f"##= {target}\n##% {end}\n") == []
    assert "the quote is not in" in verdicts(f"##= {target}\n##% {end}\n##% {start}\n")[0]
