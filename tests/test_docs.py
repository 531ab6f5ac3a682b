"""The documentation: the MkDocs site builds strictly (a broken link or anchor, a setting without a
description, a README section the docs include that is gone: each fails the build), and what the
README and the pages say about commands and paths is what the code has."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MKDOCS = Path(sys.executable).with_name("mkdocs")


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_build_strictly(tmp_path):
    assert MKDOCS.exists(), f"{MKDOCS} is missing: install the docs extra (pip install -e '.[docs]'; .ci/run does)"
    r = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    site = tmp_path / "site"
    concepts = (site / "concepts" / "index.html").read_text()
    # the flow, the coalescing timeline, a pool's window per platform, a push's life
    assert concepts.count('<pre class="mermaid">') == 4
    settings = (site / "reference" / "settings" / "index.html").read_text()
    assert "PUSHSYNC_COALESCE_WINDOW" in settings
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "pushsync pool create" in cli and "--apns-key-id" in cli
    api = (site / "http-api" / "index.html").read_text()
    assert "RegisterDevice" in api and "PublishEvents" in api
    assert (site / "bench" / "throughput.png").stat().st_size > 0
    # the README's ten-minute path is included in Getting started, not copied
    assert "Run it for real in ten minutes" in (site / "getting-started" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strictness is real: the same docs with one link to a heading that does not exist fail."""
    for entry in ROOT.iterdir():  # the tree as it is (the hooks read the code and bench/), docs/ a copy
        if entry.name not in ("docs", "mkdocs.yml", "site"):
            (tmp_path / entry.name).symlink_to(entry)
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    page = docs / "producing-events.md"
    page.write_text(page.read_text() + "\nSee [nowhere](concepts.md#no-such-heading).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
                      .replace("- docs/hooks.py", f"- {docs / 'hooks.py'}"))
    r = subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(config), "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0 and "no-such-heading" in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_setting_without_a_description_fails_the_generator(monkeypatch):
    from pushsync import settings

    module = hooks()
    monkeypatch.setitem(settings._VARS, "PUSHSYNC_NEW_THING", ("batch_size", "int", 1))
    with pytest.raises(module.DocsError, match="no description for PUSHSYNC_NEW_THING"):
        module.settings_markdown()


def _ten_minute_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"\[start:ten-minutes\](.*?)\[end:ten-minutes\]", text, re.S)
    assert section, "the README lost its ten-minute path"
    script = "\n".join(re.findall(r"```sh\n(.*?)```", section.group(1), re.S)).replace("\\\n", " ")
    lines = []
    for line in script.splitlines():
        line = line.split(" #")[0]
        # each `pushsync ...` up to the end of its command: inside $(...), before > or &, or the line's end
        for match in re.finditer(r"(?:^|[\s(])(pushsync\s[^)>&;|]*)", line):
            lines.append(shlex.split(match.group(1)))
    return lines


def test_the_ten_minute_path_names_only_commands_and_options_that_exist():
    """A newcomer copies these lines as they are: each `pushsync ...` of them must parse."""
    from pushsync.cli import build_parser

    lines = _ten_minute_lines()
    assert len(lines) >= 10, lines
    refused = []
    for words in lines:
        args = [w if not w.startswith("$") else "us-east-1:00000000-0000-0000-0000-000000000000" for w in words[1:]]
        if args[:1] == ["worker"]:  # Celery parses the worker's options; the command must exist
            args = args[:1]
        try:
            build_parser().parse_args(args)
        except SystemExit:
            refused.append(" ".join(words))
    assert refused == [], f"the README's ten-minute path names what the CLI refuses: {refused}"


def test_the_readmes_command_table_has_every_command():
    from pushsync.cli import build_parser

    module = hooks()
    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `pushsync ")]
    listed = {line.split("`")[1].split()[1] for line in table}
    commands = {name for name, _text, _sub in module._subcommands(build_parser())}
    assert commands - listed == set(), "commands the README's table leaves out"


def test_the_http_api_pages_table_names_the_documents_operations():
    from api.openapi import document

    text = (ROOT / "docs" / "http-api.md").read_text()
    rows = set(re.findall(r"^\| `(GET|POST|DELETE) (/[^` ]*)`", text, re.M))
    documented = {(method.upper(), path) for path, ops in document()["paths"].items() for method in ops}
    assert rows - {("GET", "/openapi.json")} == documented
