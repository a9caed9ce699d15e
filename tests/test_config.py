"""Configuration precedence and bad input."""

import pytest

import meter
from meter.config import resolve
from meter.errors import CarbonError, ConfigError


def write_pyproject(path, body):
    path.write_text(f"[project]\nname='x'\n\n[tool.meter]\n{body}\n")
    return str(path)


def test_precedence_argument_env_pyproject_default(tmp_path):
    pp = write_pyproject(tmp_path / "pyproject.toml", 'region = "DE"\npue = 1.3\ninterval_s = 0.5')
    env = {"METER_PUE": "1.2"}
    c = resolve({"region": "FR"}, env, pp)
    assert (c.region, c.pue, c.interval_s, c.output_dir) == ("FR", 1.2, 0.5, "meter-runs")
    assert c.sources["region"] == "argument"
    assert c.sources["pue"] == "environment METER_PUE"
    assert c.sources["interval_s"] == "[tool.meter] in pyproject.toml"
    assert c.sources["output_dir"] == "default"


def test_nearest_pyproject_is_found_from_a_subdirectory(tmp_path, monkeypatch):
    write_pyproject(tmp_path / "pyproject.toml", 'region = "SE3"')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert meter.Meter(write=False).config.region == "SE3"


@pytest.mark.parametrize("args,match", [
    ({"pue": 0.9}, "between 1"),
    ({"interval_s": 0}, "must be > 0"),
    ({"interval_s": -1}, "must be > 0"),
    ({"interval_s": "fast"}, "not a number"),
    ({"carbon": "watttime"}, "use 'offline'"),
])
def test_bad_values_say_what_to_do(args, match):
    with pytest.raises(ConfigError, match=match):
        meter.Meter(write=False, **args)


def test_unknown_pyproject_key(tmp_path):
    pp = write_pyproject(tmp_path / "pyproject.toml", 'regin = "FR"')
    with pytest.raises(ConfigError, match="did you mean region"):
        resolve({}, {}, pp)


def test_unknown_region_lists_close_matches():
    with pytest.raises(CarbonError, match=r"did you mean .*FR \(France\)"):
        meter.Meter(write=False, region="Frnace")


def test_output_dir_that_is_a_file_fails_at_creation(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not writable.*METER_OUTPUT_DIR"):
        meter.Meter(output_dir=str(tmp_path / "afile" / "runs"))


@pytest.mark.parametrize("kw, match", [
    ({"interval_s": float("inf")}, "at most 3600"), ({"interval_s": 1e10}, "at most 3600"),
    ({"interval_s": float("nan")}, "must be > 0"), ({"pue": float("inf")}, "between 1"), ({"pue": float("nan")}, "between 1"),
    ({"cpu_power_w": float("inf")}, "per busy hardware thread"),
])
def test_numbers_are_checked_at_creation_with_the_fix(kw, match):
    import meter
    from meter.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        meter.Meter(write=False, **kw)
