"""Grouped, annotated ``--help`` for click: option sections, defaults, env vars, examples.

Click lists every option under one "Options" heading; ``Command`` writes one section
per ``Option.group`` instead (the command's own options first, then each config table,
then NATS), and prints the epilog (examples, the precedence line) as written rather
than rewrapped. ``Option`` shows, besides click's range, the default as a person reads
it (``30 s``, ``random``), its bounds, the environment variable and the TOML key that
set the same value.
"""

from __future__ import annotations

from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""Context settings of every fedgate command (``-h`` as argparse had it, wider help)."""


class Option(click.Option):
    """A click option with a help section, and the settings it stands for.

    ``group`` names its section in ``--help``; ``default_text`` is the default as shown
    (click's ``show_default`` would print ``None`` for "not given"); ``env`` and
    ``file_key`` are the environment variable and ``table.key`` of the TOML file that
    set the same value (shown only, never read by click: ``fedgate.options`` merges).
    Docstring markup (````name````) is dropped from the help text.
    """

    def __init__(
        self,
        *args: Any,
        group: str = "",
        default_text: str | None = None,
        env: str | None = None,
        file_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        self.default_text = default_text
        self.env = env
        self.file_key = file_key

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        """``(flags, help)``, the help followed by ``[default; range; env; key]``."""
        record = super().get_help_record(ctx)  # for click's flags and range text
        if record is None:
            return None
        extra = self.get_help_extra(ctx)
        items = []
        if self.default_text is not None:
            items.append(f"default: {self.default_text}")
        elif "default" in extra:
            items.append(f"default: {extra['default']}")
        if "range" in extra:
            items.append(extra["range"])
        if "required" in extra:
            items.append("required")
        if self.env:
            items.append(f"env {self.env}")
        if self.file_key:
            items.append(f"key {self.file_key}")
        text = (self.help or "").replace("``", "")
        return record[0], f"{text}  [{'; '.join(items)}]" if items else text


class Command(click.Command):
    """A click command whose help groups its options and keeps its epilog's layout."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per option group, in the order the groups first appear."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            group = param.group if isinstance(param, Option) and param.group else "Options"
            sections.setdefault(group, []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows, col_max=34)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The epilog line by line, as written (examples must not be rewrapped)."""
        write_verbatim(self.epilog, formatter)


class Group(click.Group):
    """The ``fedgate`` group: its subcommands are ``Command`` s, its epilog as written."""

    command_class = Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands in the order they were added (click sorts them by name)."""
        return list(self.commands)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The epilog line by line, as written."""
        write_verbatim(self.epilog, formatter)


def write_verbatim(text: str | None, formatter: click.HelpFormatter) -> None:
    """``text`` after a blank line, each line as it is (click would rewrap it)."""
    if text:
        formatter.write_paragraph()
        for line in text.splitlines():
            formatter.write(f"{line}\n")
