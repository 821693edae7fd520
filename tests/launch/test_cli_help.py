"""Every option of every ``baps-fed`` subcommand says in ``--help`` what it does."""

from __future__ import annotations

import argparse

from baps_fed.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, argparse.ArgumentParser]:
    """Each leaf command's parser by its full name ("train", "fm serve"), nested groups included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, f"{prefix}{name} ")
    return found or {prefix.strip(): parser}


def _without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        and (not action.help or not action.help.strip() or action.help == argparse.SUPPRESS)
    ]


def test_the_walk_finds_every_command_and_option():
    commands = _commands(build_parser())
    assert {"train", "evaluate", "simulate", "site", "coordinator", "fm serve"} <= set(commands)
    assert "--lr" in commands["train"]._option_string_actions


def test_a_parser_with_a_bare_option_is_caught():
    p = argparse.ArgumentParser()
    p.add_argument("--documented", help="says what it does")
    p.add_argument("--bare")
    p.add_argument("path")
    assert _without_help(p) == ["--bare", "path"]


def test_every_option_has_help_text():
    missing = {
        name: bare
        for name, parser in _commands(build_parser()).items()
        if (bare := _without_help(parser))
    }
    assert not missing, f"options without help (baps_fed/cli/): {missing}"
