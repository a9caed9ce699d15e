"""A missing framework is an ImportError that says which extra to install (real subprocesses,
the framework hidden from the import system)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, hidden, hint", [
    ("meter.integrations.transformers", "transformers", 'pip install "meter-ml[hf]"'),
    ("meter.integrations.lightning", "lightning", "pip install lightning"),  # no extra: it would pull torch
    ("meter.integrations.torch", "torch", "pip install torch"),
])
def test_missing_framework_says_what_to_install(module, hidden, hint):
    code = f"import sys; sys.modules[{hidden!r}] = None\ntry:\n    import {module}\nexcept ImportError as e:\n    print(e)\n    print(e.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    message, name = out.strip().splitlines()
    assert hint in message and module in message
    if "meter-ml[" in hint:  # the extra it names exists
        import tomllib

        root = __import__("os").path.dirname(__import__("os").path.dirname(__file__))
        extras = tomllib.load(open(f"{root}/pyproject.toml", "rb"))["project"]["optional-dependencies"]
        assert hint.split("[")[1].split("]")[0] in extras
    assert name == hidden


def test_import_meter_does_not_import_the_integrations():
    code = "import sys, meter; print(any(m.startswith('meter.integrations') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
