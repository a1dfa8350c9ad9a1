"""Every snippet of every page under ``docs/`` runs and prints what the page says (issue 12).

A page is Markdown; its ```` ```python ```` blocks are doctest sessions (``>>> `` / ``... `` lines
followed by the expected output). All blocks of one page run in order in one namespace, through
:class:`doctest.DocTestRunner`, so a page can build on its earlier snippets and the printed
numbers (28.5 / 28.54, k_eff 7, 256 vs 2048 tokens and 64x, the variance decomposition...) are
compared with the text. A page without a snippet, a ```` ```python ```` block without a
``>>>`` example, an index that does not link every page, and a ``medseg`` command shown on a
page whose subcommand or flag the CLI does not have all fail.

``docs/architecture.md`` (the package map, no chapter content) is the one page exempt from the
snippet rule.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import shlex
from pathlib import Path

import pytest

from medseg.cli import main as medseg_main

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Pages that document the package's structure, not the chapter: no snippet required.
NO_SNIPPETS = {"architecture.md"}
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name not in NO_SNIPPETS)
#: One page per part of the specification (SPEC.md) plus the index.
REQUIRED = {"index.md", "tasks.md", "losses.md", "architectures.md", "physics.md",
            "uncertainty.md", "workflow.md"}

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def code_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """``(first line number, body)`` of each fenced block of ``language`` (1-based lines)."""
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in _FENCE.finditer(text) if m.group(1) == language]


def page_doctest(name: str) -> doctest.DocTest:
    """All ``>>>`` examples of a page's python blocks as one doctest with line numbers."""
    path = DOCS / name
    text = path.read_text(encoding="utf-8")
    parser = doctest.DocTestParser()
    examples: list[doctest.Example] = []
    for lineno, body in code_blocks(text, "python"):
        found = parser.get_examples(body, name=name)
        assert found, f"{name}:{lineno}: a python block with no '>>>' example is never run"
        for ex in found:
            ex.lineno += lineno - 1
        examples.extend(found)
    return doctest.DocTest(examples, {"__name__": f"docs.{path.stem}"}, name, str(path), 0,
                           text)


def test_pages_cover_the_specification() -> None:
    assert REQUIRED <= set(PAGES), f"missing pages: {sorted(REQUIRED - set(PAGES))}"
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    unlinked = sorted(set(PAGES) - links - {"index.md"})
    assert not unlinked, f"index.md does not link {unlinked}"
    for target in links:
        assert (DOCS / target).is_file(), f"index.md links a missing page {target}"


@pytest.mark.parametrize("name", PAGES)
def test_page_snippets(name: str) -> None:
    test = page_doctest(name)
    assert len(test.examples) > 0, f"{name} has no runnable snippet"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    try:
        result = runner.run(test, out=report.write, clear_globs=True)
    finally:
        test.globs.clear()
    assert result.failed == 0, f"{name}: {result.failed} snippet(s) differ\n{report.getvalue()}"


def shown_commands() -> list[tuple[str, int, list[str]]]:
    """``(page, line, argv)`` of every ``medseg ...`` (or ``-m medseg.cli ...``) command shown
    in a bash block; a line ending in ``\\`` continues on the next one."""
    found = []
    for name in PAGES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for lineno, body in code_blocks(text, "bash"):
            pending, start = "", 0
            for offset, raw in enumerate(body.splitlines()):
                if not pending:
                    start = lineno + offset
                line = raw.split(" #", 1)[0].strip()
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                words, pending = shlex.split(pending + line), ""
                if words[:1] == ["medseg"]:
                    found.append((name, start, words[1:]))
                elif "medseg.cli" in words:
                    found.append((name, start, words[words.index("medseg.cli") + 1:]))
    return found


def _help(sub: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        medseg_main([sub, "--help"])
    assert stop.value.code == 0, f"medseg {sub} --help failed"
    return out.getvalue()


def test_shown_commands_exist() -> None:
    """Commands are shown, not run: each subcommand and each ``--flag`` must be in its help."""
    commands = shown_commands()
    assert commands, "the docs show no medseg command"
    helps: dict[str, str] = {}
    for page, lineno, argv in commands:
        sub = argv[0]
        if sub not in helps:
            helps[sub] = _help(sub)
        flags = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        for flag in sorted(flags):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[sub]), (
                f"{page}:{lineno}: 'medseg {sub}' has no option {flag}"
            )
