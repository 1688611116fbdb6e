"""Issue 15: the eval, training and mining flags are generated from the config dataclasses.

Every field of every config a subcommand uses is a flag of that subcommand (or listed, with its reason, in
``cli.NOT_FLAGS``); ``--flag value`` gives a config holding that value; the flags' defaults are the
dataclass defaults (or listed in ``cli.OVERRIDES``); and building the parser imports no torch. ``densekit eval``
has no flag beside ``EvalConfig``'s but ``--json``, and ``jobs.evaluate(EvalConfig(...))`` refuses what the
command refuses with the message the command prints."""
import argparse
import functools
import subprocess
import sys
from dataclasses import MISSING, dataclass, fields

import pytest

from densekit.eval import cli, jobs
from densekit.eval.args import add_config_args, config_from_args, field_default
from densekit.eval.config import EvalConfig
from densekit.reranker.config import (BlockRankConfig, BlockRankTrainOptions, CrossEncoderConfig, QLMConfig,
                                      RerankerConfig, RerankTrainConfig)
from densekit.core.settings import field_type, flag, setting
from densekit.retriever.config import MineConfig, TrainConfig

OUT = ["--data", "d", "--out", "o"]
REQUIRED = {("eval",): ["--data", "d"]}  # else OUT
EXTRA = {("mine",): ["--index", "i"]}  # --max-ratio needs dense mining
CONTEXT = {"per_query": ["--loss", "mw"], "teacher_temperature": ["--loss", "kl", "--train-file", "t.jsonl"],
           "cache_lower_layers": ["--train-layers", "2"],
           "lower_cache_dir": ["--train-layers", "2", "--cache-lower-layers"]}  # flags that other flags make meaningful (cli.check_args)
# eval: flags that other flags make meaningful (EvalConfig refuses them alone)
DENSE, HYBRID, RERANK = ["--retriever", "dense"], ["--retriever", "hybrid"], ["--reranker", "r"]
EVAL_CONTEXT = {**dict.fromkeys(("models", "index", "factory", "nprobe", "ef_search", "batch_size"), DENSE),
                **dict.fromkeys(("hybrid_weight", "hybrid_norm"), HYBRID),
                **dict.fromkeys(("rerank_mode", "rerank_top_k", "rerank_batch_size", "score_cache", "fuse"), RERANK),
                "fuse_norm": [*RERANK, "--fuse", "0.5"], "tune_split": [*RERANK, "--fuse", "auto"],
                "tune_queries": [*RERANK, "--fuse", "auto"], "tune_run": [*RERANK, "--fuse", "auto", "--run", "r.trec"]}
# Values that a generic rule cannot make valid
SPECIAL = {"template": "Doc: {document}\nQuery: {query}", "lora_targets": ["q_proj", "v_proj"], "score_heads": [0, 2],
           "lower_cache_dir": "cache/lower", "models": ["m1", "m2"], "rerank_top_k": 5}


def required(command) -> list[str]:
    return REQUIRED.get(command, OUT)


def context(command, name: str) -> list[str]:
    return EVAL_CONTEXT.get(name, []) if command == ("eval",) else CONTEXT.get(name, [])


@functools.lru_cache(maxsize=None)
def densekit() -> argparse.ArgumentParser:
    """One parser for the module (parsing does not change it)."""
    return cli.build_parser()


def subparser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    sub = densekit()
    for word in command:
        action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = action.choices[word]
    return sub


def actions_by_dest(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings}


def exposed() -> list:
    """(command, config class, field) for every field the command must offer as a flag."""
    return [pytest.param(command, cls, f, id=f"{' '.join(command)}:{cls.__name__}.{f.name}")
            for command in cli.CONFIGS for cls in cli.configs(command) for f in fields(cls)
            if f.name not in cli.NOT_FLAGS.get(command, {})]


def other_value(cls, f, action):
    """A valid value of the field that differs from the flag's default."""
    base, _ = field_type(cls, f.name)
    default = action.default if action.default is not None else field_default(f)
    if f.name in SPECIAL:
        return SPECIAL[f.name]
    if base is bool:
        return not default
    if action.choices:
        return next(c for c in action.choices if c != default)
    if base is int:
        return (default if default is not None else f.metadata.get("min", 0)) + 3
    if base is float:
        if "max" in f.metadata:
            return 0.25 if default != 0.25 else 0.75
        return (default or 1.0) * 2 + 0.5
    return (default if default is not None else f.name) + " (changed)"


def kind_context(command, name: str) -> list[str]:
    """``--kind K`` for a field only some reranker kinds have (a kind's config or training options)."""
    by_kind = cli._kind_settings().get(name) if command == ("train", "reranker") else None
    return ["--kind", next(iter(by_kind))] if by_kind else []


def argv_for(action, value) -> list[str]:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return [action.option_strings[0]]
    return [action.option_strings[0], *(map(str, value) if isinstance(value, list) else [repr(value) if isinstance(value, float)
                                                                                         else str(value)])]


def test_the_cli_configs_are_the_expected_ones():
    """A config used by a subcommand but missing here would escape the tests below."""
    assert {cls for command in cli.CONFIGS for cls in cli.configs(command)} == \
        {TrainConfig, RerankTrainConfig, RerankerConfig, QLMConfig, BlockRankConfig, BlockRankTrainOptions,
         CrossEncoderConfig, MineConfig, EvalConfig}
    for command, excluded in cli.NOT_FLAGS.items():  # every exclusion names a real field and says why
        names = {f.name for cls in cli.CONFIGS[command] for f in fields(cls)}
        assert set(excluded) <= names and all(reason.strip() for reason in excluded.values()), command


@pytest.mark.parametrize("command, cls, f", exposed())
def test_every_field_is_a_flag_that_round_trips(command, cls, f):
    parser = subparser(command)
    action = actions_by_dest(parser).get(f.name)
    assert action is not None, f"{cls.__name__}.{f.name} has no flag in `densekit {' '.join(command)}`"
    assert action.help and action.help.strip(), f"--{f.name}: no help text (the field's metadata help)"
    value = other_value(cls, f, action)
    argv = [*command, *required(command), *EXTRA.get(command, []), *context(command, f.name),
            *kind_context(command, f.name), *argv_for(action, value)]
    args = densekit().parse_args(argv)
    cli.check_args(densekit(), args)
    assert getattr(config_from_args(cls, args), f.name) == value


@pytest.mark.parametrize("command", list(cli.CONFIGS))
def test_defaults_are_the_dataclass_defaults(command):
    overridden = {name for name, kw in cli.overrides(command).items() if "default" in kw}
    args = densekit().parse_args([*command, *required(command)])
    by_dest = actions_by_dest(subparser(command))
    for cls in cli.configs(command):
        built = config_from_args(cls, args)
        for f in fields(cls):
            if f.name in cli.NOT_FLAGS.get(command, {}):
                continue
            if f.default is MISSING and f.default_factory is MISSING:  # no default: a required flag
                assert by_dest[f.name].required, f.name
                continue
            if f.name in overridden:
                assert by_dest[f.name].default == cli.overrides(command)[f.name]["default"]
                assert getattr(built, f.name) == field_default(f), f.name  # deferred to the config's own default
                continue
            assert by_dest[f.name].default == field_default(f), f.name
            assert getattr(built, f.name) == field_default(f), f.name
    if command == ("train", "reranker"):  # the shared --doc-max-tokens defers to each scorer's default
        assert config_from_args(RerankerConfig, args).doc_max_tokens == RerankerConfig().doc_max_tokens
        assert config_from_args(QLMConfig, args).doc_max_tokens == QLMConfig().doc_max_tokens


@pytest.mark.parametrize("command, cls, f", [p for p in exposed() if "min" in p.values[2].metadata])
def test_constraints_are_checked_at_parse_time(command, cls, f, capsys):
    action = actions_by_dest(subparser(command))[f.name]
    base, _ = field_type(cls, f.name)
    low = f.metadata["min"]
    bad = low if f.metadata.get("min_open") else low - (1 if base is int else 0.5)
    with pytest.raises(SystemExit) as stop:
        densekit().parse_args([*command, *required(command), action.option_strings[0], str(bad)])
    assert stop.value.code == 2 and f"argument {action.option_strings[0]}" in capsys.readouterr().err


def test_a_new_field_becomes_a_flag_without_mapping(capsys):
    @dataclass
    class Toy:
        steps: int = setting(3, "how many", min=1)
        rate: float | None = setting(None, "a rate in 100% of cases", min=0, max=1)
        mode: str = setting("a", "which mode", choices=("a", "b"))
        fast: bool = setting(False, "go fast")
        safe: bool = setting(True, "stay safe")
        names: list[str] | None = setting(None, "some names")

    parser = argparse.ArgumentParser()
    assert add_config_args(parser, Toy) == ["steps", "rate", "mode", "fast", "safe", "names"]
    assert "100% of cases" in parser.format_help()
    assert config_from_args(Toy, parser.parse_args([])) == Toy()
    toy = config_from_args(Toy, parser.parse_args("--steps 5 --rate 0.5 --mode b --fast --no-safe --names x y".split()))
    assert toy == Toy(5, 0.5, "b", True, False, ["x", "y"])
    for argv, message in ((["--steps", "0"], "0 is not a positive integer (must be >= 1)"),
                          (["--rate", "1.5"], "1.5 is not a number in [0, 1]"), (["--mode", "c"], "invalid choice")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err


def test_help_imports_no_torch():
    code = ("import sys; from densekit.eval.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- densekit eval: one EvalConfig

def test_eval_flags_are_exactly_the_eval_config_fields():
    """A field without a flag, or a flag (but --json: how the command prints) without a field, fails."""
    flags = {a.dest for a in subparser(("eval",))._actions if a.option_strings} - {"help", "json"}
    assert flags == {f.name for f in fields(EvalConfig)}


def test_an_unset_eval_setting_means_what_its_help_says():
    """``EvalConfig.value`` resolves an unset field to ``UNSET`` (fails when jobs and the help drift apart, e.g. a
    default changed in one place only)."""
    from densekit.eval.config import UNSET

    helps = {f.name: f.metadata["help"] for f in fields(EvalConfig)}
    config = EvalConfig("mini-beir")
    for name, value in UNSET.items():
        assert f"default: {value}" in helps[name], name
        assert getattr(config, name) is None and config.value(name) == value


def cli_error(argv, capsys) -> str:
    """What ``densekit eval ARGV`` prints to stderr, refused with exit status 2."""
    try:
        code = cli.main(["eval", *argv])
    except SystemExit as stop:
        code = stop.code
    assert code == 2, argv
    return capsys.readouterr().err


@pytest.mark.parametrize("settings", [
    {"top_k": 0}, {"top_k": "two"}, {"reranker": "r", "fuse": 1.5}, {"reranker": "r", "fuse": "half"},
    {"retriever": "hybrid", "hybrid_weight": 1.2},
    {"relevance_level": 0}, {"retriever": "dense", "batch_size": 0}, {"reranker": "r", "rerank_top_k": -2},
    {"retriever": "bm25", "nprobe": 4}, {"models": ["m"]}, {"reranker": "r", "top_k": 5, "rerank_top_k": 10},
    {"retriever": "hybrid", "hybrid_norm": "rrf", "hybrid_weight": 0.3}, {"fuse": 0.5}, {"fuse_norm": "z"},
    {"tune_queries": 5}, {"run": "r.trec", "retriever": "dense"}, {"retriever": "dense", "nprobe": 2, "ef_search": 8},
    {"reranker": "r", "fuse": "auto", "run": "r.trec"}, {"retriever": "dense", "models": ["a", "b"], "index": "i"},
], ids=lambda settings: ",".join(settings))
def test_the_python_api_refuses_with_the_message_the_cli_prints(settings, capsys):
    """A bad value or combination: ``jobs.evaluate(EvalConfig(...))`` raises ValueError with the very message that
    ``densekit eval`` prints (after ``argument`` for a value refused at parse time), exit status 2."""
    with pytest.raises(ValueError) as refused:
        jobs.evaluate(EvalConfig("d", **settings))
    argv = ["--data", "d"]
    for name, value in settings.items():
        argv += [flag(EvalConfig, name), *map(str, value if isinstance(value, list) else [value])]
    err = cli_error(argv, capsys)
    assert str(refused.value) in err and (f"densekit: error: {refused.value}" in err or
                                          f"error: argument {refused.value}" in err), (str(refused.value), err)
