"""Docs that run: every Python snippet in README.md and docs/ is executed (tests/doc_snippets.py),
so a page cannot drift from the code again."""

import glob
import os
import subprocess
import sys

import pytest

from tests.doc_snippets import normalise, snippets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(["README.md"] + [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)])
MAX_NOT_RUN = 2  # snippets marked "# not run by the docs test: REASON"; keep it small

# Pages whose snippets cannot run yet, with why (none today). Entries are strict expected
# failures: the test fails (XPASS) the day such a page runs, and the entry must then go.
NOT_YET_RUNNABLE: dict[str, str] = {}


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page, tmp_path, request):
    if page in NOT_YET_RUNNABLE:
        request.applymarker(pytest.mark.xfail(reason=NOT_YET_RUNNABLE[page], strict=True))
    if not snippets(os.path.join(ROOT, page)):
        return
    # The README's session shows a machine without GPU or RAPL, as most laptops and CI runners
    # are; the same settings make it reproducible on any machine.
    env = {**os.environ, "METER_GPUS": "none", "METER_RAPL_ROOT": str(tmp_path / "no-powercap"),
           "METER_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ROOT, "MPLBACKEND": "Agg"}
    for k in ("METER_REGION", "METER_PUE", "METER_OUTPUT_DIR", "METER_CARBON", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "doc_snippets.py"), os.path.join(ROOT, page)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-6000:]


def test_pages_with_python_have_snippets_found():
    found = {page: len(snippets(os.path.join(ROOT, page))) for page in PAGES}
    assert found["README.md"] >= 2 and found["docs/getting-started.md"] >= 2 and found["docs/cards.md"] >= 3


def test_few_snippets_are_not_run_and_each_says_why():
    marked = [(page, line, why) for page in PAGES for line, _, why in snippets(os.path.join(ROOT, page)) if why]
    assert len(marked) <= MAX_NOT_RUN, marked
    assert all(len(why) > 10 for _, _, why in marked)


def test_runner_catches_a_wrong_snippet(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text("```python\nx = {'a': [1, 2]}\n```\n\n```python\n>>> len(x['a'])\n3\n```\n\n"
                    "```python\n# not run by the docs test: needs an NVIDIA GPU\nimport nonexistent\n```\n\n"
                    "```python\nundefined_name()\n```\n")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "doc_snippets.py"), str(page)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "len(x['a'])" in p.stderr and "NameError: name 'undefined_name'" in p.stderr and "nonexistent" not in p.stderr
    # measured (decimal) figures and paths are placeholders; words and counts are not
    assert normalise("<Span 'a' 0.112 s 4.676 J> in /tmp/x/y") == normalise("<Span 'a' 1.5 s 9.0 J> in /sys/class/powercap")
    assert normalise("7.1e-05") == normalise("3.2e-06")
    assert normalise("estimated") != normalise("counter") and normalise("3") != normalise("2")
