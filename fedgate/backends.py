"""The worker backends' own flags, as ``worker.backends.registry`` declares them.

The registry declares them on an argparse parser (each backend owns its flags in one
module, so adding a backend touches one module); they are read back from that parser
here and become click options of ``fedgate worker``, keeping their groups and help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

import click

from fedgate.help import Option
from fedgate.options import Params

F = TypeVar("F", bound=Callable[..., Any])

BACKEND_GROUP = "Worker backend"
"""The help section of ``--backend`` itself."""


def backend_options() -> Callable[[F], F]:
    """Add ``--backend`` and each backend's flags, in the registry's groups."""
    from worker.backends import registry

    parser = argparse.ArgumentParser(add_help=False)
    registry.add_arguments(parser)
    options = []
    # argparse has no public listing of a parser's groups; these attributes are how the
    # tools that document argparse parsers (sphinx-argparse, argcomplete) read them
    for group in parser._action_groups:
        title = BACKEND_GROUP if group.title in (None, "options") else str(group.title)
        title = title[:1].upper() + title[1:]
        for action in group._group_actions:
            options.append(_from_argparse(action, title))

    def add(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return add


def _from_argparse(action: argparse.Action, group: str) -> Callable[[F], F]:
    common: dict[str, Any] = {"cls": Option, "group": group, "help": action.help}
    if action.nargs == 0:  # store_true
        return click.option(*action.option_strings, action.dest, is_flag=True, **common)
    ptype: Any = click.Choice(list(action.choices)) if action.choices else action.type or str
    shown = None
    if action.default not in (None, False) and "default" not in (action.help or ""):
        shown = str(action.default)
    return click.option(
        *action.option_strings,
        action.dest,
        type=ptype,
        default=action.default,
        metavar=None if action.choices else action.metavar or action.dest.upper(),
        default_text=shown,
        **common,
    )


def backend_namespace(params: Params) -> argparse.Namespace:
    """The parameters as the registry's ``create`` reads them (an argparse Namespace)."""
    return argparse.Namespace(**params)
