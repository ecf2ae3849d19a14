"""What every CLI in jobs/ shares for `--help` and errors (imported by name: the script's own
folder is first on sys.path, and `jobs` is not a package).

`HelpFormatter` keeps the description and examples as written and states each option's default
where its help does not already; `examples` takes the command lines of a script's docstring
for the epilog; `in_flags` rewrites the Python argument names in a pipeline error
(`text_column=`) as the flags of the CLI that got it (`--text-column`).
"""
from __future__ import annotations

import argparse
import re


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and "(default: X)" after every option whose default is a
    value (not None, False or an empty list) and whose help does not name its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or action.required
                or default in (None, False, argparse.SUPPRESS) or default == [] or default == ()):
            return text
        return f"{text} (default: %(default)s)"


def parser(prog: str, doc: str, starts=("python",)) -> argparse.ArgumentParser:
    """A CLI's parser: the docstring's first paragraph as description, its command lines as the
    examples, every default stated."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=HelpFormatter, epilog=examples(doc, starts))


def examples(doc: str, starts=("python",)) -> str:
    """The epilog: the command lines of a script's docstring (and their continuation lines)."""
    lines = [ln for ln in doc.splitlines() if ln.strip().startswith((*starts, "--"))]
    return "examples:\n" + "\n".join(lines)


def in_flags(message: str, parser: argparse.ArgumentParser, aliases: dict[str, str] | None = None) -> str:
    """`message` with each Python argument name (`text_column=`, `cast_text=True (--cast)`) put
    as the parser's flag, so a CLI error speaks the CLI's words."""
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    flags.update(aliases or {})
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
    # "name=value (--flag value)": the flag form is already there, keep only it.
    message = re.sub(rf"\b(?:{names})=(?:'[^']*'|\S*?)(?: or '[^']*')* \((--[^)]*)\)", r"\1", message)
    # "name= / --flag" (both spellings given): the flag alone.
    message = re.sub(rf"\b(?:{names})=\S* / (--[\w-]+)", r"\1", message)
    # "name=value": "--flag value" (a bare "name=" becomes "--flag").
    return re.sub(rf"\b({names})=('[^']*'|[^\s,;:)]*)",
                  lambda m: (flags[m.group(1)] + (" " + m.group(2).strip("'") if m.group(2) else "")),
                  message)
