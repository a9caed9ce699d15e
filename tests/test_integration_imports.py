"""A missing framework is an ImportError that says which extra to install (real subprocesses,
the framework hidden from the import system)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, hidden, extra", [
    ("meter.integrations.transformers", "transformers", "hf"),
    ("meter.integrations.lightning", "lightning", "lightning"),
    ("meter.integrations.torch", "torch", "torch"),
])
def test_missing_framework_names_the_extra(module, hidden, extra):
    code = f"import sys; sys.modules[{hidden!r}] = None\ntry:\n    import {module}\nexcept ImportError as e:\n    print(e)\n    print(e.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    message, name = out.strip().splitlines()
    assert f'pip install "meter-ml[{extra}]"' in message and module in message
    assert name == hidden


def test_import_meter_does_not_import_the_integrations():
    code = "import sys, meter; print(any(m.startswith('meter.integrations') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
