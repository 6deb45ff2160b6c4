"""The documentation checks out: every relative link of README, docs/ and the benchmark READMEs resolves (files
and heading anchors), and every command in a code block of the README parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agent_lightning.cli import main
from agent_lightning.cli.export import export_parser
from agent_lightning.cli.learn import learn_parser
from agent_lightning.cli.recipes import compress_parser
from agent_lightning.cli.serve import serve_parser
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").rglob("README.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.DOTALL)


def test_pages_were_found():
    assert len(PAGES) >= 15


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    text = page.read_text(encoding="utf-8")
    for block in _code_blocks(text):
        text = text.replace(block, "")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def readme_commands() -> list[list[str]]:
    """The command lines of the README's bash blocks that run this project (comments and set-up left out)."""
    commands = []
    for block in _code_blocks((REPO / "README.md").read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["python", "train.py"]:
                commands.append(words[2:])
            elif words[:3] == ["python", "-m", "agent_lightning"]:
                commands.append(words[3:])
            elif words[:1] == ["agent-lightning"]:
                commands.append(words[1:])
    return commands


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 4


@pytest.mark.parametrize("args", readme_commands(), ids=lambda args: " ".join(args)[:60])
def test_every_readme_command_parses(args, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's relative paths (configs/...) are from the repository root
    if args == ["--help"]:
        main(args)
        assert "commands:" in capsys.readouterr().out
        return
    name, rest = args[0], args[1:]
    if name == "export":
        options = export_parser().parse_args(rest)  # the checkpoint itself is what a user's run writes
        assert options.output
        return
    if name == "serve":
        options = serve_parser().parse_args(rest)  # the export itself is what a user's run writes
        assert options.model and options.port
        return
    if name == "learn":
        options, recipe = learn_parser().parse_known_args(rest)  # the store is what a served run writes
        assert options.feedback and options.ckpt and options.output and (options.compress or not recipe)
        return
    if name == "compress":
        _, rest = compress_parser().parse_known_args(rest)
        name = "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([name, *rest, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "trainer:" in capsys.readouterr().out
