"""`import meter` stays light."""

import subprocess
import sys


def test_import_pulls_no_heavy_modules():
    code = (
        "import sys, meter\n"
        "heavy = [m for m in ('pandas', 'torch', 'pynvml', 'requests', 'codecarbon', 'psutil', 'numpy', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_import_starts_no_thread_and_reads_no_environment():
    code = (
        "import os, threading\n"
        "os.environ['METER_PUE'] = 'not a number'\n"  # would raise if read at import
        "import meter\n"
        "print(threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "1"


def _import_graph():
    """Edges module -> meter module it imports (at module level or inside functions)."""
    import ast
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "meter")
    mods = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(root))[:-3].replace(os.sep, ".")
                mods[rel.removesuffix(".__init__")] = os.path.join(d, f)
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.endswith("__init__.py") else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                for a in node.names:
                    dep = f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target
                    if dep in mods and dep != m:
                        graph[m].add(dep)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return graph


def test_no_import_cycles_inside_meter():
    graph = _import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
    assert "meter.core" not in graph["meter.spans"]  # spans talk to their Meter through a protocol
