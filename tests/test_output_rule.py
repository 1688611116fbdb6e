"""One rule for every output flag (issue 22): what exists at an output path and is not densekit's own output of
that kind is refused, before any model loads, and left as it was.

``densekit.eval.cli.OUTPUTS`` names every flag of every subcommand that writes somewhere; the first test holds the
parser to it (a new flag that writes and is not listed fails it), the second walks every listed flag with a
user's file (and a user's folder) in its place. Before the fix ``eval --roc`` replaced the file (exit 0)."""
import re


from densekit.eval.cli import OUTPUTS, _subparsers, build_parser, main

# Help words of a flag that writes somewhere (a flag named --out always does).
WRITES = re.compile(r"\b(write|writes|draw|save|built there|on disk here)\b")
# Flags whose help has such a word but that write nothing themselves, and why.
NOT_OUTPUTS = {"overwrite": "permission for the output flags", "shards": "input folders of index merge",
               "fixed_negatives": "a training-data switch"}


def _commands(parser, path=()):
    """``(command path, parser)`` of every leaf subcommand."""
    subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _commands(child, path + (name,))


def test_every_flag_that_writes_is_in_the_outputs_table():
    found = {}
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest not in NOT_OUTPUTS and \
                    (action.dest == "out" or WRITES.search(action.help or "")):
                found.setdefault(command, set()).add(action.dest)
    listed = {command: set(flags) for command, flags in OUTPUTS.items()}
    assert found == listed
    assert len(list(_subparsers(build_parser()))) > len(OUTPUTS)  # the walk saw the whole tree


def _recipes(d, run, bert, causal, new):
    """A command line per (subcommand, output flag) whose only problem is ``{}``, the output path."""
    rerank = ["--data", str(d), "--split", "test", "--model", str(causal)]
    suite = new.parent / "suite.toml"
    suite.write_text(f'[[dataset]]\nname = "tiny"\ndata = "{d}"\n\n[[system]]\nname = "bm25"\n\n[[system]]\nname = "b2"\n')
    dense_suite = new.parent / "dense.toml"
    dense_suite.write_text(suite.read_text() + f'\n[[system]]\nname = "dense"\nfirst_stage = "dense:{bert}"\n')
    return {
        (("eval",), "save_run"): ["eval", "--data", str(d), "--save-run", "{}"],
        (("eval",), "roc"): ["eval", "--data", str(d), "--roc", "{}"],
        (("eval",), "index"): ["eval", "--data", str(d), "--retriever", "dense", "--model", str(bert), "--index", "{}"],
        (("eval",), "score_cache"): ["eval", "--data", str(d), "--reranker", f"qlm:{causal}", "--score-cache", "{}"],
        (("compare",), "json"): ["compare", str(run), "--data", str(d), "--json", "{}"],
        (("compare",), "plot"): ["compare", str(run), "--data", str(d), "--plot", "{}"],
        (("data", "download"), "out"): ["data", "download", "scifact", "--out", "{}"],
        (("index", "build"), "out"): ["index", "build", "--data", str(d), "--model", str(bert), "--out", "{}"],
        (("index", "merge"), "out"): ["index", "merge", "--out", "{}", "--shards", str(new)],
        (("train", "retriever"), "out"): ["train", "retriever", "--data", str(d), "--split", "test", "--model", str(bert),
                                          "--out", "{}"],
        (("train", "reranker"), "out"): ["train", "reranker", *rerank, "--first-stage", "bm25", "--out", "{}"],
        (("train", "reranker"), "index"): ["train", "reranker", *rerank, "--out", str(new), "--index", "{}"],
        (("train", "reranker"), "lower_cache_dir"): ["train", "reranker", *rerank, "--first-stage", "bm25", "--out", str(new),
                                                     "--train-layers", "1", "--cache-lower-layers", "--lower-cache-dir", "{}"],
        (("mine",), "out"): ["mine", "--data", str(d), "--split", "test", "--out", "{}"],
        (("mine",), "teacher_cache"): ["mine", "--data", str(d), "--split", "test", "--out", str(new / "m.jsonl"),
                                       "--teacher", f"qlm:{causal}", "--teacher-cache", "{}"],
        (("benchmark",), "out"): ["benchmark", str(suite), "--out", "{}"],
        (("benchmark",), "indexes"): ["benchmark", str(dense_suite), "--out", str(new), "--indexes", "{}"],
    }


def snapshot(folder):
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_every_output_flag_refuses_what_is_not_its_own(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys,
                                                       monkeypatch):
    import transformers

    from densekit.core import models
    from densekit.retriever import first_stage as stage

    run = tmp_path / "bm25.trec"
    assert main(["eval", "--data", str(tiny_beir), "--save-run", str(run)]) == 0
    recipes = _recipes(tiny_beir, run, tiny_bert, tiny_causal_lm, tmp_path / "new")
    assert set(recipes) == {(command, flag) for command, flags in OUTPUTS.items() for flag in flags}

    def fail(*args, **kwargs):
        raise AssertionError("a model loaded (or a first stage ran) before the output was checked")

    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    monkeypatch.setattr(models, "_converted_gguf", fail)
    monkeypatch.setattr(stage, "first_stage", fail)
    victims = tmp_path / "victims"
    (victims / "folder").mkdir(parents=True)
    (victims / "folder" / "thesis.tex").write_text("mine")
    (victims / "paper.pdf").write_text("draft")
    before = snapshot(victims)
    for (command, flag), argv in recipes.items():
        kind = OUTPUTS[command][flag]
        places = [victims / "paper.pdf"]  # a user's file where densekit would write
        if kind not in ("file", "cache", "dataset folder's parent", "index folders' parent"):  # these write new entries into a folder
            places.append(victims / "folder")  # a folder densekit did not write
        for place in places:
            overwrites = [[], ["--overwrite"]] if any("--overwrite" in a.option_strings for a in _parser(command)._actions) \
                else [[]]
            for extra in overwrites:
                if extra and kind == "file" and place.is_file():
                    continue  # --overwrite is the user's word that this file may go
                line = [a.replace("{}", str(place)) for a in argv] + extra
                try:
                    code = main(line)
                except SystemExit as stop:
                    code = stop.code
                err = capsys.readouterr().err
                assert code == 2 and "densekit: error:" in err and str(place) in err, (line, err)
                assert snapshot(victims) == before, line
    assert not (tmp_path / "new").exists()


def _parser(command):
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser
