"""How `bge-triton --help` reads: one line per command, and every option's default beside its help."""

from __future__ import annotations

import argparse

# Command names are at most 16 characters ("make-bench-model"): 4 of indent + 16 + 2 spaces puts every command's
# one-line help in column 24, so on an 80-column terminal a command help of up to 54 characters stays on its line.
HELP_COLUMN = 24


class HelpFormatter(argparse.HelpFormatter):
    """argparse's `ArgumentDefaultsHelpFormatter`, made readable for this CLI.

    An option whose help already says its default (`default: ...`, for values like None that mean "derived
    from something else") keeps its words; a flag shows `(default: off)`; a required option says `(required)`;
    every other option gets `(default: VALUE)`. tests/test_cli_help.py checks that no option is left without one.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = HELP_COLUMN, width=None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def _format_action(self, action: argparse.Action) -> str:
        # The commands as a plain list at the options' indent (argparse would print a COMMAND heading line and
        # indent them two more columns than it measured, wrapping the longest name's help onto a second line).
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command) for command in action._get_subactions())
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is False and action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None or action.default == []:
            return text  # the help must say what happens without it: the test reports it otherwise
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through `add_subparsers`, every command's parser) with `HelpFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
