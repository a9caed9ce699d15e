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
