"""The user's guide (docs/, mkdocs.yml) and the README: the site builds with `mkdocs build --strict`, every page has
a title, no relative link or anchor is broken, every ```python example runs as written (offline, on the tiny
`mini-beir` folder that docs/concepts/data.md writes), every `densekit ...` command shown parses, and the results
pages hold no figure outside the sections `python bench/readme_results.py` writes."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
README = ROOT / "README.md"
ALL_PAGES = [README, *PAGES, ROOT / "bench" / "README.md"]
SETUP_PAGE = DOCS / "concepts" / "data.md"  # its first python block writes mini-beir, the data of every example

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
GENERATED = re.compile(r"<!-- generated: ([\w-]+) -->\n.*?<!-- end: \1 -->", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
FIGURE = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(text: str, *languages: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of the fenced blocks in one of ``languages``."""
    return [(text[:m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in languages]


def prose(text: str, inline_code: bool = False) -> str:
    """``text`` without front matter, fenced blocks and (unless ``inline_code``) inline code: what links, headings and
    figures are read from."""
    text = FRONT_MATTER.sub("", text)
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return text if inline_code else re.sub(r"`[^`\n]*`", "``", text)


def slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs uses for anchors)."""
    text = re.sub(r"<[^>]+>", "", heading.replace("`", ""))
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    return {slug(m.group(2)) for m in HEADING.finditer(prose(path.read_text(), inline_code=True))}


def generated_plots() -> set[str]:
    """Site paths the mkdocs hook adds (the committed plots of bench/results)."""
    sys.path.insert(0, str(DOCS))
    try:
        import gen_cli
    finally:
        sys.path.remove(str(DOCS))
    return set(gen_cli.plots())


# ---------------------------------------------------------------- the site builds

def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' (the dev extra has it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for page in PAGES:
        built = site / page.relative_to(DOCS).with_suffix(".html")
        assert built.exists(), f"{rel(page)} was not built"
    cli = (site / "reference" / "cli.html").read_text()
    for command in ("densekit eval", "densekit index build", "densekit index merge", "densekit train retriever",
                    "densekit train reranker", "densekit mine", "densekit benchmark", "densekit compare"):
        assert f"<code>{command}</code>" in cli, f"the CLI reference lacks {command}"
    assert "<!-- cli-reference -->" not in cli  # the marker was replaced
    import densekit

    python = (site / "reference" / "python.html").read_text()
    for name in densekit.__all__:  # fails if a front-door object is added without reaching the reference
        assert f"<code>densekit.{name}</code>" in python, f"the Python reference lacks densekit.{name}"
    assert "<!-- python-reference -->" not in python
    for plot in generated_plots():
        assert (site / plot).exists(), plot


# ---------------------------------------------------------------- titles and links

@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_page_has_a_title(page):
    text = FRONT_MATTER.sub("", page.read_text()).lstrip()
    assert text.startswith("# "), f"{rel(page)} does not open with an '# h1' title"
    titles = [m for m in HEADING.finditer(prose(page.read_text())) if len(m.group(1)) == 1]
    assert len(titles) == 1, f"{rel(page)} has {len(titles)} h1 titles"


@pytest.mark.parametrize("page", ALL_PAGES, ids=rel)
def test_relative_links_resolve(page):
    plots = generated_plots()
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            resolved = page
        else:
            resolved = (page.parent / path).resolve()
            site_path = resolved.relative_to(DOCS.resolve()).as_posix() if resolved.is_relative_to(DOCS.resolve()) else None
            if not resolved.exists() and site_path not in plots:
                broken.append(f"{target} (no such file)")
                continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{rel(page)}: broken links: {broken}"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [rel(p) for p in PAGES if p.relative_to(DOCS).as_posix() not in nav]
    assert not missing, f"pages missing from mkdocs.yml nav: {missing}"


# ---------------------------------------------------------------- figures come from bench/results

@pytest.mark.parametrize("page", [README, *sorted((DOCS / "results").glob("*.md"))], ids=rel)
def test_no_figure_outside_generated_sections(page):
    """A measured figure is written by bench/readme_results.py from bench/results, never typed: outside the generated
    sections (and code), a results page holds no decimal number."""
    text = GENERATED.sub("", page.read_text())
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    found = FIGURE.findall(prose(text))
    assert not found, f"{rel(page)}: figures outside <!-- generated --> sections: {found}"


# ---------------------------------------------------------------- the commands shown parse

def _commands():
    for page in ALL_PAGES:
        text = page.read_text()
        for line_no, code in blocks(text, "bash", "sh", "shell", "console"):
            code = re.sub(r"\\\n\s*", " ", code)
            for line in code.splitlines():
                line = line.split(" #", 1)[0].strip()
                at = line.find("densekit ")
                if line.startswith("#") or at < 0 or "..." in line or "$" in line or "[" in line:
                    continue
                yield pytest.param(line[at:], id=f"{rel(page)}:{line_no}:{line[at:at + 40]}")


@pytest.mark.parametrize("command", list(_commands()))
def test_shown_command_parses(command):
    from densekit.eval.cli import build_parser, check_args

    parser = build_parser()
    argv = shlex.split(command)[1:]
    try:
        args = parser.parse_args(argv)
        check_args(parser, args)
    except SystemExit as err:
        pytest.fail(f"`{command}` is refused by the parser (exit {err.code})")


# ---------------------------------------------------------------- the python examples run

RUNNER = """
import json, sys
ns = {"__name__": "__main__"}
for where, code in json.load(open(sys.argv[1])):
    print(f"--- {where}", flush=True)
    try:
        exec(compile(code, where, "exec"), ns)
    except BaseException:
        print(f"example failed: {where}", file=sys.stderr)
        raise
"""


def _snippet_pages():
    return [p for p in ALL_PAGES if blocks(p.read_text(), "python")]


def test_examples_have_their_data():
    first = blocks(SETUP_PAGE.read_text(), "python")
    assert first and 'write_beir("mini-beir"' in first[0][1], f"{rel(SETUP_PAGE)}'s first python block must write mini-beir"


@pytest.mark.parametrize("page", _snippet_pages(), ids=rel)
def test_python_examples_run(page, tmp_path):
    """Every ```python block of the page, in order, in one fresh process (the blocks of a page share a namespace),
    in an empty folder where docs/concepts/data.md's first block has written mini-beir."""
    setup = blocks(SETUP_PAGE.read_text(), "python")[0]
    examples = [(f"{rel(page)}:{line}", code) for line, code in blocks(page.read_text(), "python")]
    if page != SETUP_PAGE:
        examples.insert(0, (f"{rel(SETUP_PAGE)}:{setup[0]}", setup[1]))
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    (tmp_path / "runner.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DENSEKIT_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "examples.json")], cwd=work,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{rel(page)}: an example failed\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
