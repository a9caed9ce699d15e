"""Promise 2: names are data, never markup.

Hostile stage names, tag keys and values, run names and metric names go through a real Meter
into a run log, then through every output: Markdown (rendered by a CommonMark/GFM parser),
HTML (loaded in headless Chromium with a local server watching for beacons), LaTeX, the
Hugging Face card (YAML front matter parsed back, updated twice), plots and the terminal table.
Each output must show every name as exactly its text, and nothing else."""

from __future__ import annotations

import html as htmlmod
import json
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import meter
from meter.report import cards, escape, plots
from meter.report.hf import BEGIN, END
from meter.testing import FakeSensor


class Beacon:
    """A local HTTP server: any request to it is an injection that called out."""

    def __init__(self):
        self.hits: list[str] = []
        hits = self.hits

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def beacon():
    b = Beacon()
    yield b
    b.close()


def hostile_names(url: str) -> list[str]:
    return [
        "<img src=x onerror=\"document.title='PWNED';fetch('URL/onerror')\">",
        "<script>document.title='PWNED';new Image().src='URL/script'</script>",
        "\"><svg onload=\"fetch('URL/svg')\">",
        "' onmouseover='alert(1)' x='",
        "</td></tr></table><script>fetch('URL/table')</script>",
        "<iframe src='URL/iframe'></iframe>",
        "<style>body{background:url(URL/css)}</style>",
        "<!-- meter:efficiency:end -->",
        "<!-- meter:efficiency:start -->",
        "\n---\ntitle: pwned\n---\n",
        "![beacon](URL/md.png)",
        "[click](javascript:alert(1))",
        "<URL/autolink>",
        "cost $\\frac{1}{$",
        "$x^2$ and $$y$$",
        "lone \ud800 surrogate",
        "tail surrogate \udfff",
        "\x1b[2J\x1b[31mred terminal",
        "nul\x00byte and \x07bell",
        "pipe | breaks | cells",
        "`code` and ``more``",
        "*bold* _it_ ~~strike~~ **x**",
        "{{ site.secret }} {% raw %}",
        "&lt;script&gt; entity &amp;",
        "back\\slash \\\\ double",
        "[5cm] latex row spacing",
        "# heading",
        "- list item",
        "1. ordered",
        "> quote",
        "50% \\end{table} & # ~ ^ _",
        "key: value\n- yaml: list",
        "emoji \U0001f600 CJK \u8bad\u7ec3 RTL \u202eevil",
        "line\u2028separator\u2029para\x85nel",
        "x" * 3000,
    ]


def _names(url):
    # A span name cannot hold "/" (nesting builds the path): JavaScript's \x2f stands in, so the
    # scripts still call the beacon; the raw payloads (with "/") go into tags and run names.
    return [n.replace("URL", url).replace("/", "\\x2f") for n in hostile_names(url)]


def _raw(url):
    return [n.replace("URL", url) for n in hostile_names(url)]


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory, beacon):
    """Two real runs (a sweep) whose stage names, tags, run names and metric names are hostile."""
    out = tmp_path_factory.mktemp("hostile")
    names, raw = _names(beacon.url), _raw(beacon.url)
    dirs = []
    for k, run_name in enumerate([raw[0], raw[13] + " " + raw[10] + " " + raw[4]]):
        s = FakeSensor.counter("gpu:0")
        m = meter.Meter(sensors=[s], output_dir=str(out), region="FR", run_name=run_name, interval_s=0.05)
        root_tags = {"kind": "train", **{f"p{i}": r + ("" if k == 0 else " b") for i, r in enumerate(raw)}}
        with m.track(names[2], samples=1, tags=root_tags):
            for i, n in enumerate(names):
                with m.track(n, samples=2, tags={n[:40]: n, "metric." + raw[13]: 0.5 + k / 10, "lr": raw[4]}):
                    s.values["gpu:0"] += 1.0 + i
        m.close()
        dirs.append(m.run_dir)
    return names, dirs


def shown(name: str) -> str:
    return escape.clean(name)


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.tags, self._cur = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "li", "h1", "h2", "h3", "p"):
            self._cur = []

    def handle_endtag(self, tag):
        if tag in ("td", "th", "li", "h1", "h2", "h3", "p") and self._cur is not None:
            self.cells.append("".join(self._cur))
            self._cur = None

    def handle_data(self, data):
        if self._cur is not None:
            self._cur.append(data)


def _parse(html_text):
    p = _Cells()
    p.feed(html_text)
    return p


def _stage_cells(cells):
    return {c.lstrip("\u00a0") for c in cells}


def test_markdown_renders_names_as_text(hostile_runs):
    from markdown_it import MarkdownIt

    names, dirs = hostile_runs
    md = cards.render_paths(dirs, fmt="md", live=False)
    assert "\ud800" not in md and "\x1b" not in md and "\x00" not in md
    rendered = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(md)
    p = _parse(rendered)
    allowed = {"h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "strong", "code"}
    assert {t for t, _ in p.tags} <= allowed, {t for t, _ in p.tags} - allowed
    assert "<hr" not in rendered and "<img" not in rendered and "<a " not in rendered and "<script" not in rendered
    assert "<em>" not in rendered and "<s>" not in rendered and "<del>" not in rendered
    cells = _stage_cells(p.cells)
    for n in names:
        assert shown(n) in cells, n[:40]
    # a sweep: the titles and the metric name are text too
    assert any(shown(names[0]) in c for c in p.cells)
    assert any(c.startswith(shown(names[13])) for c in p.cells)
    # a table row per stage, nothing more: no name broke a row
    body_rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.count(" | ") == 14 and not ln.startswith("| stage |")]
    assert len(body_rows) == 2 * (len(names) + 1)


def test_hf_card_yaml_and_markers_cannot_be_forged(hostile_runs, tmp_path):
    import yaml
    from huggingface_hub import ModelCard

    names, dirs = hostile_runs
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\ntags:\n- x\n---\n\n# My model\n\nKept text.\n")
    cards.update_hf_card(dirs[0], str(readme), live=False)
    cards.update_hf_card(dirs[0], str(readme), live=False)  # the second update must replace, not add
    text = readme.read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "mit" and front["tags"] == ["x"]
    assert set(front["co2_eq_emissions"]) == {"emissions", "source", "training_type", "geographical_location", "hardware_used"}
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "# My model" in text and "Kept text." in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.count(" | ") == 5]
    assert len(rows) == len(names) + 1 + 1  # header + stages of run 0 (the root and every hostile one)
    assert ModelCard.load(str(readme)).data.to_dict()["license"] == "mit"
    fresh = cards.render_paths(dirs[0], fmt="hf", live=False)
    assert fresh.startswith("---\n") and yaml.safe_load(fresh.split("---\n")[1])["co2_eq_emissions"]["training_type"]


_TEX_CMD = re.compile(r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater|textbar|textquotedbl)\{\}|\\[&%$#_{}]|\{[\[\]]\}")


def test_latex_escapes_every_special(hostile_runs):
    names, dirs = hostile_runs
    tex = cards.render_paths(dirs[0], fmt="latex", live=False)
    lines = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and " & " in ln][1:]  # after the header
    assert len(lines) == len(names) + 1
    for ln in lines:
        cell = ln.split(" & ")[0].replace(r"\quad ", "")
        rest = _TEX_CMD.sub("", cell)
        assert not re.search(r"[&%$#_{}~^\\\[\]<>|]", rest), cell[:80]
    for n in names:
        assert escape.tex(n) in tex
    assert "\ud800" not in tex and "\n---" not in tex.replace("\n---", "")


def test_plots_draw_names_literally():
    import matplotlib

    matplotlib.use("Agg")
    run = {"stages": [{"name": n, "depth": 0, "components": {"gpu": {"energy_j": 1.0, "provenance": "counter"}},
                       "energy_j": 1.0, "own_energy_j": 1.0} for n in ("cost $\\frac{1}{$", "$x^2$", "a \ud800 b", "same", "same")]}
    fig = plots.stage_energy_bars(run)
    import io

    with plots.plain_text():
        fig.savefig(io.BytesIO(), format="png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    shown_labels = [x.rstrip("\u200b") for x in labels]
    assert shown_labels[::-1][0] == "cost $\\frac{1}{$" and shown_labels[::-1][2] == "a \ufffd b"
    assert len(set(labels)) == 5  # two stages named alike are two bars


def _chromium(path: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed for this test (apt install chromium)"
    p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                        "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_html_in_chromium_runs_no_injected_script(hostile_runs, beacon, tmp_path):
    names, dirs = hostile_runs
    page = tmp_path / "report.html"
    page.write_text(cards.render_paths(dirs, fmt="html", live=False), encoding="utf-8")
    # The control: the same payloads inserted raw do run in this browser (the check can fail).
    control = tmp_path / "control.html"
    control.write_text("<html><head><title>ok</title></head><body><table><tr><td>" + names[0] + names[1]
                       + "</td></tr></table></body></html>", encoding="utf-8")
    dom = _chromium(str(control))
    assert "<title>PWNED</title>" in dom and any(h in ("/onerror", "/script") for h in beacon.hits)
    beacon.hits.clear()

    dom = _chromium(str(page))
    assert beacon.hits == []
    assert "<title>meter efficiency report</title>" in dom and "PWNED" not in dom.split("<body")[0]
    p = _parse(dom)
    count = re.search(r'<span id="stage-count">(\d+)</span>', dom)
    assert count and int(count.group(1)) == 2 * (len(names) + 1)  # the page's own script ran
    assert not [a for t, a in p.tags if t in ("script", "img", "svg", "iframe", "style") and
                (a.get("src") or "").startswith(("x", "http")) or any(k.startswith("on") for k in a)]
    assert sum(t == "script" for t, _ in p.tags) == 1
    cells = _stage_cells(p.cells)
    for n in names:
        assert shown(n) in cells, n[:40]


def test_terminal_table_and_run_summary_have_no_control_characters(hostile_runs, tmp_path):
    from meter.report.table import stage_table

    names, dirs = hostile_runs
    text = stage_table(meter.load(dirs[0], live=False))
    assert "\x1b" not in text and "\x00" not in text and "\ud800" not in text
    assert len(text.splitlines()) == 2 + len(names) + 1
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "meter")
    p = subprocess.run([exe, "run", "--output", str(tmp_path), "--region", "FR", "--name", names[17], "--", "true"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "\x1b[2J" not in p.stderr and "\u241b[2J" in p.stderr


def test_json_card_keeps_names_exactly(hostile_runs):
    names, dirs = hostile_runs
    card = json.loads(cards.render_paths(dirs[0], fmt="json", live=False))
    got = {s["name"] for s in card["runs"][0]["stages"]}
    for n in names:
        assert n in got or n.encode("utf-8", "surrogatepass") and any("\ud800" in g or "\udfff" in g for g in got)


def test_notebook_repr_escapes(hostile_runs):
    names, dirs = hostile_runs
    r = cards.report(dirs[0], live=False)
    p = _parse(r._repr_html_())
    assert {t for t, _ in p.tags} <= {"table", "caption", "thead", "tbody", "tr", "th", "td"}
    assert htmlmod.unescape(shown(names[0])) in _stage_cells(p.cells) or shown(names[0]) in _stage_cells(p.cells)
