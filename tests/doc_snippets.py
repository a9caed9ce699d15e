"""Run the Python snippets of a Markdown file, in order, in one namespace (like a notebook).

    python tests/doc_snippets.py README.md docs/cards.md      # what tests/test_docs.py runs

- ```` ```python ```` blocks run as code; a block of ``>>>`` lines runs as a session and its
  output (stdout, and stderr, where meter's warnings go) must match what the page shows, with
  decimal numbers (measured joules, seconds, grams) and absolute paths treated as placeholders:
  they differ from machine to machine; words, integers (counts) and the shapes must not.
- A block whose first line is ``# not run by the docs test: REASON`` is shown, not run; the
  reason is required, and tests/test_docs.py keeps the number of such blocks small.

Run it from a scratch directory: snippets write run logs to the current directory.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import sys
import traceback

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
SKIP = re.compile(r"^#\s*not run by the docs test:\s*(\S.*)$")
PYTHON = {"python", "py", "pycon", "python3"}
_FLOAT = re.compile(r"(?<![\w.])[-+]?\d+(\.\d+([eE][-+]?\d+)?|[eE][-+]?\d+)")
_PATH = re.compile(r"(?<![\w.])/[\w.\-/]+")


def snippets(path: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every Python block of a Markdown file."""
    text = open(path, encoding="utf-8").read()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1).lower() not in PYTHON:
            continue
        code = m.group(2)
        first = code.lstrip("\n").splitlines()[0] if code.strip() else ""
        skip = SKIP.match(first)
        out.append((text.count("\n", 0, m.start()) + 1, code, skip.group(1) if skip else None))
    return out


def normalise(text: str) -> str:
    text = _PATH.sub("PATH", text)
    text = _FLOAT.sub("N", text)
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())


def _session(code: str, ns: dict, where: str) -> list[str]:
    problems = []
    for ex in doctest.DocTestParser().get_examples(code):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                exec(compile(ex.source, f"{where}:{ex.lineno + 1}", "single"), ns)
            except Exception:  # noqa: BLE001 - reported with the snippet's place
                traceback.print_exc()
        got = out.getvalue()
        if normalise(got) != normalise(ex.want):
            problems.append(f"{where}, line {ex.lineno + 1}: {ex.source.strip()}\n  page shows:\n{ex.want}  ran and gave:\n{got}")
    return problems


def run_file(path: str) -> list[str]:
    """Run every snippet of ``path``; returns the problems found (empty: all ran as shown)."""
    ns: dict = {"__name__": "__main__"}
    problems = []
    for line, code, skip in snippets(path):
        if skip:
            continue
        where = f"{path}:{line}"
        if code.lstrip().startswith(">>>"):
            problems += _session(code, ns, where)
            continue
        try:
            exec(compile(code, where, "exec"), ns)
        except Exception:  # noqa: BLE001
            problems.append(f"{where}: the snippet raised\n{traceback.format_exc()}")
    return problems


def main(argv: list[str]) -> int:
    failed = 0
    for path in argv:
        problems = run_file(path)
        for p in problems:
            print(p, file=sys.stderr)
        failed += bool(problems)
        print(f"{path}: {len(snippets(path))} snippet(s), {'FAILED' if problems else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
