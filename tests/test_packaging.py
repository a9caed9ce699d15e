"""Distribution metadata: extras that never pull torch, py.typed in the wheel, classifiers."""

import os
import subprocess
import sys
import zipfile

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the metadata is the same on 3.10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packages that are torch or require it: pip would resolve them to the newest CUDA build.
TORCH_PULLING = {"torch", "accelerate", "lightning", "pytorch-lightning", "torchvision"}


def _name(req: str) -> str:
    for sep in "<>=!~[; ":
        req = req.split(sep)[0]
    return req.lower().replace("_", "-")


def test_no_user_extra_pulls_torch():
    project = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["hf"]} == {"transformers", "huggingface-hub"}
    for extra, reqs in extras.items():
        if extra != "dev":  # our own test environment, installed after a pinned CPU torch
            assert not {_name(r) for r in reqs} & TORCH_PULLING, extra
    assert not {_name(r) for r in project["dependencies"]} & TORCH_PULLING
    assert "Typing :: Typed" in project["classifiers"]


def test_wheel_ships_py_typed_and_data(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next(f for f in os.listdir(tmp_path) if f.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "meter/py.typed" in names and "meter/carbon/countries.csv" in names and "meter/integrations/torch.py" in names
    meta = zipfile.ZipFile(tmp_path / wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Classifier: Typing :: Typed" in meta
    assert "Provides-Extra: hf" in meta and "Requires-Dist: accelerate" in meta and 'extra == "dev"' in meta
    hf_lines = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and 'extra == "hf"' in ln]
    assert sorted(_name(ln.split(":", 1)[1].strip()) for ln in hf_lines) == ["huggingface-hub", "transformers"]
