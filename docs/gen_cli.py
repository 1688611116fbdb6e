"""MkDocs hook (mkdocs.yml ``hooks:``): the CLI reference and the results figures, made at build time.

- ``reference/cli.md`` holds the marker ``<!-- cli-reference -->``; it is replaced by ``densekit <cmd> --help`` of
  every command and sub-command, rendered from the parser itself (``densekit.eval.cli.build_parser``), so the page
  can never disagree with the installed CLI.
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
    return markdown


if __name__ == "__main__":
    print(reference())
