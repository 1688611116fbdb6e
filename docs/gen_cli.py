"""MkDocs hook (mkdocs.yml ``hooks:``): the CLI reference and the results figures, made at build time.

- ``reference/cli.md`` holds the marker ``<!-- cli-reference -->``; it is replaced by ``densekit <cmd> --help`` of
  every command and sub-command, rendered from the parser itself (``densekit.eval.cli.build_parser``), so the page
  can never disagree with the installed CLI.
- ``reference/python.md`` holds ``<!-- python-reference -->``; it is replaced by the signature and docstring of every
  object ``import densekit`` offers (``densekit.__all__``) and of the public members of the modules in ``MODULES``,
  read from the installed code (``inspect``).
- The PNG plots under ``bench/results`` are added to the site as ``results/img/<name>.png`` (those of the BEIR table
  as ``results/img/beir-<name>.png``), so the results pages show the committed plots without copies in docs/.

Run it alone to print the reference: ``python docs/gen_cli.py``.
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
PY_MARKER = "<!-- python-reference -->"
PY_PAGE = "reference/python.md"
# Modules a user calls beyond the front door: their public functions and classes, in source order.
MODULES = ("densekit.eval.config", "densekit.eval.runfile", "densekit.eval.fusion", "densekit.core.runs", "densekit.reranker.kinds")
WIDTH = "100"  # argparse wraps help at $COLUMNS: fixed, so the page does not depend on the terminal


@contextmanager
def _columns(width: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def commands(parser: argparse.ArgumentParser):
    """``(prog, help line, parser)`` of ``parser`` and every sub-command below it, depth first."""
    yield parser.prog, parser.description or "", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                for prog, text, grandchild in commands(child):
                    yield prog, (helps.get(name, "") if grandchild is child else text), grandchild


def reference() -> str:
    """The Markdown of every command's help, one section each."""
    from densekit.eval.cli import build_parser

    with _columns(WIDTH):
        parser = build_parser()
        parts = []
        for prog, text, child in commands(parser):
            level = "#" * min(2 + prog.count(" "), 4)
            parts += [f"{level} `{prog}`", "", text[:1].upper() + text[1:] + ("." if text and not text.endswith(".") else ""),
                      "", "```text", child.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _markdown(doc: str) -> str:
    """A docstring as Markdown: RST double backticks become code spans; indented blocks stay preformatted."""
    import inspect

    return inspect.cleandoc(doc or "(no docstring)").replace("``", "`")


class _Plain(str):
    """An annotation held as text (``from __future__ import annotations``), shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def _signature(function, drop_first: bool = False) -> str:
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return "(...)"
    params = list(signature.parameters.values())[1 if drop_first else 0:]
    plain = lambda a: _Plain(a) if isinstance(a, str) else a  # noqa: E731
    params = [q.replace(annotation=plain(q.annotation)) for q in params]
    return str(signature.replace(parameters=params, return_annotation=plain(signature.return_annotation)))


def _entry(name: str, obj) -> list[str]:
    import inspect

    kind = "class" if inspect.isclass(obj) else "def"
    lines = [f"### `{name}`", "", "```python", f"{kind} {name}{_signature(obj)}", "```", "", _markdown(obj.__doc__), ""]
    if inspect.isclass(obj):
        for member, value in vars(obj).items():
            if member.startswith("_") or not (inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod))):
                continue
            bound = isinstance(value, (classmethod, staticmethod))
            text = _signature(getattr(obj, member) if bound else value, drop_first=not bound)
            lines += [f"#### `{name}.{member}`", "", "```python", f"{member}{text}", "```", "",
                      _markdown(getattr(obj, member).__doc__), ""]
    return lines


def python_reference() -> str:
    """The Markdown of the front door's objects and of ``MODULES``' public members, from their docstrings."""
    import importlib
    import inspect

    import densekit

    parts = ["## `import densekit`", "", _markdown(densekit.__doc__), ""]
    for name in densekit.__all__:
        obj = getattr(densekit, name)
        parts += _entry(f"densekit.{name}", obj)
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        parts += [f"## `{module_name}`", "", _markdown(module.__doc__), ""]
        members = [(n, v) for n, v in vars(module).items() if not n.startswith("_")
                   and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module_name]
        for n, v in members:
            parts += _entry(n, v)
    return "\n".join(parts)


def plots() -> dict[str, Path]:
    """Site path -> committed PNG of bench/results."""
    results = ROOT / "bench" / "results"
    found = {f"results/img/{p.name}": p for p in sorted(results.glob("*.png"))}
    found.update({f"results/img/beir-{p.name}": p for p in sorted(results.glob("beir/*.png"))})
    return found


# ---------------------------------------------------------------- mkdocs events

def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, path in plots().items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"{PAGE} lost its marker {MARKER}")
        markdown = markdown.replace(MARKER, reference())
    if page.file.src_uri == PY_PAGE:
        if PY_MARKER not in markdown:
            raise ValueError(f"{PY_PAGE} lost its marker {PY_MARKER}")
        markdown = markdown.replace(PY_MARKER, python_reference())
    return markdown


if __name__ == "__main__":
    print(reference())
