"""The README as the front door and docs/ behind it, checked against the code and the CI script.

1. README.md is at most 200 lines and opens with the two set-up commands; CI (`.ci/run`) runs the
   README's test command exactly.
2. Every long flag of `bin/trace`, `bin/trace diff` and `bin/trace audit` (the parsers' own actions) is
   documented somewhere in README.md or docs/*.md.
3. Every relative link in README.md and docs/*.md points at a file that exists, and every page in docs/
   is linked from the README.
4. The cheap commands in their ```bash blocks run and exit 0.

Which commands are cheap (rule 4): a line of a ```bash or ```sh block that starts with `bin/trace` and
has `--help` or `--static-only` among its arguments. They need no model run: parsing only, or the static
report of the built-in model or of a config on the meta device (seconds). Every other line is
documentation only and is not run here: model jobs (`bin/trace samples/sample.wav …`), `bin/trace
diff`/`audit` on files the reader makes first, `torchrun`, `pip`, `bash bench/…`. A cheap command runs in
a scratch directory holding links to bin/ and samples/, so what it writes (`--json out.json`) lands
there, not in the checkout.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.cli.main import build_audit_parser, build_diff_parser, build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

SETUP = "python3 -m pip install -q torch==2.13.0 -e '.[test]'"
MAIN_LINE = f"{SETUP} && bin/trace samples/sample.wav   # run the main job"
TEST_LINE = f"{SETUP} && python3 -m pytest -q           # run the tests"
FENCE = re.compile(r"^```(\w*)\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def blocks(text: str):
    """(language, lines) of each fenced code block."""
    out, lang, lines = [], None, []
    for line in text.splitlines():
        m = FENCE.match(line)
        if lang is None and m:
            lang, lines = m.group(1), []
        elif lang is not None and line.strip() == "```":
            out.append((lang, lines))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def prose(text: str) -> str:
    """The text outside fenced code blocks (links are looked for there)."""
    keep, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            keep.append(line)
    return "\n".join(keep)


def long_flags() -> list[str]:
    flags = set()
    for parser in (build_parser(), build_diff_parser(), build_audit_parser()):
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
    return sorted(flags)


def cheap_commands() -> list[str]:
    found = []
    for page in PAGES:
        for lang, lines in blocks(page.read_text()):
            if lang not in ("bash", "sh"):
                continue
            for line in lines:
                argv = shlex.split(line, comments=True)
                if argv[:1] == ["bin/trace"] and ("--help" in argv or "--static-only" in argv):
                    command = shlex.join(argv)
                    if command not in found:
                        found.append(command)
    return found


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert lines[2:6] == ["```bash", MAIN_LINE, TEST_LINE, "```"], lines[:6]


def test_ci_runs_the_readmes_test_command():
    readme_test = README.read_text().splitlines()[4]
    command = readme_test.split("#", 1)[0].rstrip()  # the comment and the padding before it are the README's
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci, f".ci/run must run the README's test command exactly: {command!r}"


def test_every_long_flag_is_documented():
    text = "\n".join(page.read_text() for page in PAGES)
    flags = long_flags()
    assert {"--help", "--static-only", "--clip", "--lora-targets"} <= set(flags)  # all three parsers read
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"flags in no page of README.md or docs/*.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in LINK.findall(prose(README.read_text()))}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_architecture_page_names_every_module():
    """docs/architecture.md follows the code: every file of the package is named there by its path."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    names = [p.relative_to(ROOT / "tracer").as_posix() for p in sorted((ROOT / "tracer").rglob("*.py"))]
    missing = [n for n in names if not n.endswith("__init__.py") and f"`{n}`" not in page and f"`tracer/{n}`" not in page]
    assert missing == []


def test_there_are_cheap_commands_to_run():
    commands = cheap_commands()
    assert "bin/trace --help" in commands
    assert any("--static-only" in c for c in commands)


@pytest.mark.parametrize("command", cheap_commands())
def test_cheap_command_runs(command, tmp_path):
    for name in ("bin", "samples"):
        os.symlink(ROOT / name, tmp_path / name)
    argv = shlex.split(command)
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "trace"), *argv[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip(), command
