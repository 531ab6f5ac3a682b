"""MkDocs hooks (mkdocs.yml `hooks:`): the pages that are made from the code at build time, so that
nothing generated is committed and nothing can drift from what the code does.

- reference/settings.md: every setting of ``pushsync.settings`` (name, default, kind, bound), with
  the description kept in docs/settings.yml; a setting without one, or a description of a setting
  the code does not have, fails the build.
- reference/cli.md: every command and option of ``pushsync.cli.build_parser()``, usage and help.
- the HTTP API page's operations (the ``<!-- generated: openapi -->`` mark in http-api.md) and
  reference/openapi.json: the document the API serves (``api.openapi.document()``).
- bench/*.png: the plots of bench/results/, as the last `make bench` wrote them.

The generators are plain functions (``settings_markdown`` and the rest); tests call them too.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTIONS = Path(__file__).with_name("settings.yml")
PLOTS = ROOT / "bench" / "results"
OPENAPI_MARK = "<!-- generated: openapi -->"
USAGE_WIDTH = 100

KINDS = {
    "int": "integer", "float": "number", "bool": "true or false", "db_url": "SQLAlchemy URL (sqlite or postgresql)",
    "redis_url": "redis://, rediss:// or sentinel:// URL", "http_url": "https:// URL", "file": "path of a file",
    "secret_key": "Fernet keys, comma-separated", "password": "password", "name": "name without spaces",
    "transport": "one of",
}


class DocsError(Exception):
    """The code and the docs disagree; the message says how."""


def _descriptions() -> dict[str, str]:
    import yaml

    return yaml.safe_load(DESCRIPTIONS.read_text()) or {}


def _read_by(name: str, entry) -> bool:
    """A setting read outside pushsync.settings: its entry names the file, which must read it."""
    if not isinstance(entry, dict) or not {"read_by", "default", "value", "what"} <= set(entry):
        return False
    path = ROOT / entry["read_by"]
    return path.is_file() and f'"{name}"' in path.read_text()


def _default(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _kind(name: str, kind: str, low) -> str:
    from pushsync.settings import TRANSPORTS

    text = KINDS.get(kind, kind)
    if kind == "transport":
        text += " " + ", ".join(f"`{t}`" for t in TRANSPORTS[name])
    if low is not None:
        text += f", at least {low:g}"
    return text


def settings_markdown() -> str:
    """The settings reference, from pushsync.settings (names, defaults, kinds, bounds) and
    docs/settings.yml (what each is for). Raises DocsError when the two do not name the same settings."""
    from pushsync.settings import _VARS, Settings

    defaults = {f.name: (None if f.default is MISSING else f.default) for f in fields(Settings)}
    described = _descriptions()
    missing = sorted(set(_VARS) - set(described))
    extra = sorted(name for name, entry in described.items() if name not in _VARS and not _read_by(name, entry))
    if missing or extra:
        raise DocsError(f"docs/settings.yml: no description for {', '.join(missing) or 'none'}; "
                        f"describes settings the code does not read: {', '.join(extra) or 'none'}")
    rows = []
    for name, entry in described.items():
        if name in _VARS:
            field, kind, low = _VARS[name]
            rows.append(f"| `{name}` | {_default(defaults[field])} | {_kind(name, kind, low)} | {entry} |")
        else:
            rows.append(f"| `{name}` | `{entry['default']}` | {entry['value']} | {entry['what']} |")
    return "\n".join([
        "# Settings", "",
        "Generated from `pushsync/settings.py` when the docs are built, so it lists exactly what the code reads.",
        "",
        "Every setting is optional and read from the environment once, at start-up. A bad value stops the "
        "program with one line naming the variable. Settings are logged at start with passwords and keys "
        "shown as `***`.", "",
        "| variable | default | value | what |", "|---|---|---|---|", *rows, ""])


def _subcommands(parser: argparse.ArgumentParser):
    """(name, help, parser) of each sub-command, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name) or "", sub


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            names += f" `{action.metavar or action.dest.upper()}`"
    else:
        names = f"`{action.metavar or action.dest}`"
    text = (action.help or "").replace("|", "\\|")
    if action.choices:
        text += (" " if text else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
    if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
        text += f" (default `{action.default}`)"
    if action.required and action.option_strings:
        text += " (required)"
    return f"| {names} | {text} |"


def _command(words: list[str], text: str, parser: argparse.ArgumentParser) -> list[str]:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=USAGE_WIDTH)
    sentence = text[:1].upper() + text[1:] + ("." if text and not text.endswith(".") else "")
    out = [f"## {' '.join(words)}", "", sentence, "", "```text", parser.format_usage().strip(), "```", ""]
    rows = [_option_row(a) for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        out += ["| argument or option | what |", "|---|---|", *rows, ""]
    for name, sub_text, sub in _subcommands(parser):
        out += _command([*words, name], sub_text, sub)
    return out


def cli_markdown() -> str:
    """The command-line reference, from the argparse parsers of ``pushsync.cli.build_parser()``."""
    from pushsync.cli import build_parser

    parser = build_parser()
    out = ["# Command line", "",
           "Generated from the command's own parsers when the docs are built: each command's usage line "
           "and options are what `pushsync COMMAND --help` shows.", "",
           "Every command reads the [settings](settings.md) from the environment. Errors print one line on "
           "stderr naming what was wrong, and exit 2 for bad input (a field, a setting, a file) or 1 otherwise "
           "(an unknown pool or device, the store unreachable). `pushsync worker` passes its options to "
           "Celery's worker (`pushsync worker --help` lists them); given options win over pushsync's defaults.",
           ""]
    for name, text, sub in _subcommands(parser):
        out += _command(["pushsync", name], text, sub)
    return "\n".join(out)


def _schema_text(schema: dict) -> str:
    return "```json\n" + json.dumps(schema, indent=2) + "\n```"


def _operation(method: str, path: str, op: dict) -> list[str]:
    auth = "an API key or an identity token (`Authorization: Bearer ...`)" if op.get("security") else "none"
    out = [f"### {op['operationId']}", "", f"`{method.upper()} {path}`: {op['summary']}.", "",
           f"Credential: {auth}.", ""]
    params = op.get("parameters") or []
    if params:
        out += ["| path parameter | schema |", "|---|---|"]
        out += [f"| `{p['name']}` | `{json.dumps(p['schema'])}` |" for p in params] + [""]
    body = op.get("requestBody")
    if body:
        out += ["Body (" + ("required" if body.get("required") else "optional") + "):", "",
                _schema_text(body["content"]["application/json"]["schema"]), ""]
    out += ["| status | answer |", "|---|---|"]
    for status, answer in sorted(op["responses"].items()):
        out.append(f"| {status} | {answer['description']} |")
    return out + [""]


def openapi_markdown() -> str:
    """The operations of the OpenAPI document the API serves, one section each."""
    from api.openapi import document

    doc = document()
    out = [f"The operations below are generated from the OpenAPI {doc['openapi']} document that "
           "`pushsync api` serves at `/openapi.json` ([a copy](reference/openapi.json)); its components:", "",
           _schema_text(doc["components"]["schemas"]), ""]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += _operation(method, path, op)
    return "\n".join(out)


def plots() -> list[Path]:
    found = sorted(PLOTS.glob("*.png"))
    if not found:
        raise DocsError(f"no plots in {PLOTS}: run `make bench`, or restore bench/results/*.png")
    return found


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in (("reference/settings.md", settings_markdown()), ("reference/cli.md", cli_markdown()),
                         ("reference/openapi.json", _openapi_json())):
        files.append(File.generated(config, uri, content=content))
    for png in plots():
        files.append(File.generated(config, f"bench/{png.name}", abs_src_path=str(png)))
    return files


def _openapi_json() -> str:
    from api.openapi import document

    return json.dumps(document(), indent=2) + "\n"


def on_page_markdown(markdown, page, config, files):
    if OPENAPI_MARK in markdown:
        return markdown.replace(OPENAPI_MARK, openapi_markdown())
    return markdown
