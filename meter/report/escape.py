"""Names are data, never markup: escaping of user-provided text for every output.

Stage names, tags, run names, paths, metric names and whatever a foreign run.json holds go
through one of these before they reach a card:

- :func:`clean`: any Unicode renders: lone surrogates become U+FFFD, control characters their
  visible Control Pictures (``\\n`` -> U+2424, ESC -> U+241B), so no name can break a line, a
  table row, front matter, or a terminal;
- :func:`md`: CommonMark/GFM inline text: no emphasis, link, image, raw HTML, entity, table
  cell break, strikethrough or math can be formed, and no block (list, heading, quote, rule) can
  start; :func:`md_code` for code spans;
- :func:`tex`: LaTeX text (also ``[``/``]`` after ``\\\\`` and ``<``, ``>``, ``|`` in OT1);
- :func:`html_text`: HTML text and attribute values;
- :func:`plot_text`: matplotlib labels (no mathtext is also switched off in
  :mod:`meter.report.plots`).
"""

from __future__ import annotations

import html
import re
from typing import Any

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_C0 = {i: 0x2400 + i for i in range(0x20)}
_C0[0x09] = 0x20  # a tab reads as a space
_C0[0x7F] = 0x2421
_C1 = {i: 0xFFFD for i in range(0x80, 0xA0)}
_LINE_SEP = {0x2028: 0x2424, 0x2029: 0x2424, 0x0085: 0x2424}
_TABLE = {**_C0, **_C1, **_LINE_SEP}


def clean(value: Any) -> str:
    """``str(value)`` that every output can carry on one line."""
    text = value if isinstance(value, str) else str(value)
    text = _SURROGATE.sub("\ufffd", text)
    return text.translate(_TABLE)


# Inline CommonMark/GFM syntax: escaped with a backslash (any ASCII punctuation may be).
_MD_SPECIAL = set("\\`*_[]<>&|~${}")
_MD_BLOCK_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def md(value: Any, *, block: bool = False) -> str:
    """Markdown text that renders as exactly ``value`` (one line, no markup, no raw HTML).
    ``block=True`` for text that begins a line or list item: it cannot start a list, heading,
    quote or rule."""
    src = clean(value)
    out = []
    for i, ch in enumerate(src):
        # An underscore between letters or digits never opens or closes emphasis (CommonMark's
        # flanking rule): ``nvidia_driver`` stays readable in the Markdown source.
        if ch in _MD_SPECIAL and not (ch == "_" and 0 < i < len(src) - 1 and src[i - 1].isalnum() and src[i + 1].isalnum()):
            out.append("\\")
        out.append(ch)
    text = "".join(out)
    m = _MD_BLOCK_START.match(text) if block else None
    if m:
        lead, mark = m.group(1), m.group(2)
        text = lead + mark[:-1] + "\\" + mark[-1] + text[m.end():]
    return text


def md_code(value: Any) -> str:
    """A Markdown code span holding ``value`` (fence longer than any backtick run inside)."""
    text = clean(value).replace("|", "\u2223")  # a pipe would end a table cell even in code
    run = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
        "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "[": "{[}", "]": "{]}",
        '"': r"\textquotedbl{}"}


def tex(value: Any) -> str:
    """LaTeX text that typesets as ``value``."""
    return "".join(_TEX.get(ch, ch) for ch in clean(value))


def html_text(value: Any) -> str:
    """HTML text or attribute value (quotes escaped) showing ``value``."""
    return html.escape(clean(value), quote=True)


def plot_text(value: Any, limit: int = 60) -> str:
    """A matplotlib label: one line, at most ``limit`` characters (ellipsis)."""
    text = clean(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
