"""Bad arguments are refused once, at creation, with the argument's name and the fix; the
number-likes users naturally pass (``mask.sum()``, numpy scalars) are accepted."""

import json
import math

import numpy as np
import pytest
import torch

import meter
from meter.errors import ConfigError


def quiet_meter(tmp_path, **kw):
    args = {"output_dir": str(tmp_path / "runs"), "gpus": "none", "rapl_root": str(tmp_path / "no-rapl")}
    args.update(kw)
    return meter.Meter(**args)


# (argument, value, words the message must contain: the argument's name and the fix)
BAD_METER_ARGS = [
    ("interval_s", math.inf, "at most 3600"),
    ("interval_s", 1e10, "at most 3600"),
    ("interval_s", math.nan, "> 0"),
    ("interval_s", -1, "> 0"),
    ("interval_s", 0, "> 0"),
    ("interval_s", True, "not a number"),
    ("interval_s", "0.1", "not a number"),
    ("pue", math.inf, "between 1"),
    ("pue", math.nan, "between 1"),
    ("pue", 0.5, "between 1"),
    ("pue", True, "not a number"),
    ("pue", "1.2", "not a number"),
    ("cpu_power_w", math.inf, "per busy"),
    ("cpu_power_w", 0, "per busy"),
    ("cpu_tdp_w", True, "TDP"),
    ("cpu_tdp_w", math.inf, "TDP"),
    ("carbon", "uk:XYZ", "GB-1..GB-17"),
    ("carbon", "uk:GB-18", "GB-1..GB-17"),
    ("carbon", "electricitymaps:../x", "zone key"),
    ("carbon", "electricitymaps:", "nothing after ':'"),
    ("carbon", "offline:FR", "region='FR'"),
    ("carbon", "watttime", "unknown provider"),
    ("carbon", 5, "use 'offline'"),
    ("carbon", "uk", "needs a zone"),  # no region: nothing for the provider to answer for
    ("region", 5, "zone code as text"),
    ("output_dir", 5, "directory path"),
    ("output_dir", "", "non-empty"),
    ("rapl_root", b"\x00", "non-empty directory path"),
    ("gpus", 1.5, "a UUID"),
    ("gpus", [None], "a UUID"),
    ("gpus", True, "a UUID"),
    ("pid", -5, "process id"),
    ("pid", "x", "process id"),
    ("pid", 2**22 + 12345, "no such process"),
    ("run_name", 5, "give a string"),
    ("write", "no", "True or False"),
    ("sync_cuda", 1, "True or False"),
    ("distributed", None, "True or False"),
]


@pytest.mark.parametrize("name,value,fix", BAD_METER_ARGS, ids=[f"{n}={v!r}" for n, v, _ in BAD_METER_ARGS])
def test_bad_meter_arguments_are_refused_at_creation(tmp_path, name, value, fix):
    with pytest.raises(ConfigError) as info:
        quiet_meter(tmp_path, **{name: value})
    msg = str(info.value)
    assert name in msg or name == "carbon" and "carbon" in msg
    assert fix in msg
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing started


def test_bad_environment_values_name_their_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("METER_PUE", "inf")
    with pytest.raises(ConfigError, match="METER_PUE"):
        quiet_meter(tmp_path)
    monkeypatch.setenv("METER_PUE", "1.3")
    monkeypatch.setenv("METER_CARBON", "uk:XYZ")
    with pytest.raises(ConfigError, match="METER_CARBON"):
        quiet_meter(tmp_path)


@pytest.mark.parametrize("carbon,region", [("uk:GB-13", None), ("UK:gb", None), ("electricitymaps:DE", None),
                                           ("electricitymaps", "FR"), ("uk", "GB"), ("electricitymaps", "auto")])
def test_good_carbon_specs_are_accepted_and_normalised(tmp_path, carbon, region):
    m = quiet_meter(tmp_path, carbon=carbon, region=region, write=False)
    provider, _, zone = m.config.carbon.partition(":")
    assert provider == provider.lower() and zone == zone.upper()
    m.close()


def test_live_provider_refuses_a_region_outside_its_coverage(tmp_path):
    with pytest.raises(ConfigError, match="covers Great Britain"):
        quiet_meter(tmp_path, carbon="uk", region="FR")


@pytest.mark.parametrize("value", [math.inf, -1, math.nan, "5", b"5", [5], True, 10**400, torch.tensor([1, 2]),
                                   np.array([1.0, 2.0]), object()],
                         ids=lambda v: type(v).__name__ + ":" + repr(v)[:20])
def test_bad_counts_are_refused_with_the_count_name(tmp_path, value):
    m = quiet_meter(tmp_path, write=False)
    with pytest.raises(ConfigError, match="samples="):
        m.track("x", samples=value)
    with m.track("y") as span:
        with pytest.raises(ConfigError, match="tokens"):
            span.add(tokens=value)
    assert "tokens" not in span.result.counts
    m.close()


def test_number_likes_are_counts(tmp_path):
    mask = torch.ones(4, 8, dtype=torch.long)
    m = quiet_meter(tmp_path)
    with m.track("eval", samples=np.int64(4), tokens=mask.sum()) as span:
        span.add(tokens=torch.tensor(2.0), output_tokens=np.float32(3.5), flops=10**30)
        span.add(samples=np.uint8(1))
    counts = span.result.counts
    assert counts == {"samples": 5, "tokens": 34.0, "output_tokens": 3.5, "flops": 10**30}
    assert all(type(v) in (int, float) for v in counts.values())  # Python numbers, JSON-safe
    m.close()
    rec = json.loads((tmp_path / "runs" / m.run_id / "spans.jsonl").read_text().splitlines()[-1])
    assert rec["counts"]["tokens"] == 34.0 and rec["counts"]["flops"] == 10**30


def test_accelerator_tensors_are_read_at_exit_not_when_added(tmp_path):
    """A count on the GPU (``mask.sum()`` on CUDA) is kept and read after the exit's own
    synchronisation: ``add`` does not wait for the device. ``Accel`` quacks like a CUDA
    tensor and records when it is read."""
    reads = []

    class Accel:
        """Quacks like a one-element accelerator tensor."""

        def __init__(self, v):
            self.v, self.device = v, type("D", (), {"type": "cuda"})()

        def numel(self):
            return 1

        def __index__(self):
            reads.append(self.v)
            return self.v

    m = quiet_meter(tmp_path, write=False)
    with m.track("gen") as span:
        span.add(output_tokens=Accel(7))
        span.add(output_tokens=Accel(5), samples=2)
        assert reads == []  # nothing read inside the span
        assert span.snapshot().counts["output_tokens"] == 12  # a snapshot asks for the figures: read then
        span.add(output_tokens=Accel(1))
    assert reads == [7, 5, 1]
    assert span.result.counts == {"samples": 2, "output_tokens": 13}
    m.close()


def test_a_bad_accelerator_count_is_dropped_with_a_warning_not_raised_at_exit(tmp_path, caplog):
    class Accel:
        device = type("D", (), {"type": "cuda"})()

        def numel(self):
            return 1

        def __float__(self):
            return float("nan")

    m = quiet_meter(tmp_path, write=False)
    with m.track("gen") as span:
        span.add(output_tokens=Accel(), samples=3)
    assert span.result.counts == {"samples": 3}
    assert any("count dropped" in w and "output_tokens" in w for w in span.warnings)
    m.close()


@pytest.mark.parametrize("tags,match", [("notadict", "dict of labels"), ({1: "a"}, "tag names"), ({"": 1}, "tag names"),
                                        (["model"], "dict of labels")])
def test_bad_tags_are_refused(tmp_path, tags, match):
    m = quiet_meter(tmp_path, write=False)
    with pytest.raises(ConfigError, match=match):
        m.track("x", tags=tags)
    m.close()


def test_tag_values_are_recorded_as_json(tmp_path):
    class Config:
        def __str__(self):
            return "BertConfig(hidden=32)"

    m = quiet_meter(tmp_path)
    tags = {"lr": np.float64(3e-5), "seq": torch.tensor(128), "cfg": Config(), "layers": (1, 2), "loss": math.nan,
            "nested": {"a": np.int32(1)}}
    with m.track("train", tags=tags) as span:
        pass
    m.close()
    assert span.result.tags["lr"] == 3e-5 and type(span.result.tags["lr"]) is float
    assert span.result.tags["seq"] == 128 and type(span.result.tags["seq"]) is int
    rec = json.loads((tmp_path / "runs" / m.run_id / "spans.jsonl").read_text().splitlines()[-1])
    assert rec["tags"] == {"lr": 3e-5, "seq": 128, "cfg": "BertConfig(hidden=32)", "layers": [1, 2], "loss": None,
                           "nested": {"a": 1}}


@pytest.mark.parametrize("value", [-1, math.nan, "10", None, True])
def test_bad_timeouts_are_refused_and_infinite_waits_work(tmp_path, value):
    m = quiet_meter(tmp_path, write=False)
    with m.track("a"):
        pass
    with pytest.raises(ConfigError, match="timeout_s"):
        m.flush(value)
    assert m.flush(math.inf) is True  # waits as long as needed (was OverflowError)
    m.close(math.inf)
    assert not m.accepting


def test_totals_past_the_float_range_are_refused_and_the_span_is_kept(tmp_path):
    m = quiet_meter(tmp_path)
    with m.track("train", flops=1e308) as span:
        with pytest.raises(ConfigError, match="flops: the span's total"):
            span.add(flops=1e308)
        with pytest.raises(ConfigError, match="flops"):
            span.add(flops=10**309)
        span.add(flops=1.0)
    with m.track("after"):
        pass
    m.close()
    df = meter.load(str(tmp_path / "runs"))
    assert df["name"].tolist() == ["train", "after"] and df.attrs["problems"] == []
    assert df["flops"].iloc[0] == pytest.approx(1e308)


@pytest.mark.parametrize("value", [np.True_, torch.tensor(True), np.complex128(5 + 3j), torch.tensor(5 + 0j),
                                   torch.tensor([5]), 5 + 0j], ids=repr)
def test_booleans_complex_numbers_and_arrays_are_not_counts(tmp_path, value):
    m = quiet_meter(tmp_path, write=False)
    with pytest.raises(ConfigError, match="tokens"):
        m.track("x", tokens=value)
    m.close()


def test_unknown_counts_in_add_name_the_known_ones(tmp_path):
    m = quiet_meter(tmp_path, write=False)
    with m.track("x") as span:
        with pytest.raises(ConfigError, match="did you mean tokens"):
            span.add(token=5)
    m.close()


def test_a_tag_too_large_to_record_is_refused_and_one_whose_text_raises_is_kept(tmp_path):
    class Weird:
        def __str__(self):
            raise ZeroDivisionError

    m = quiet_meter(tmp_path)
    with pytest.raises(ConfigError, match="integer beyond"):
        m.track("x", tags={"h": 10**5000})
    with m.track("w", tags={"o": Weird()}):
        pass
    with m.track("set-later") as span:
        span.tags["big"] = 10**400  # set directly, past the check: written as null, nothing else lost
        span.tags["self"] = loop = []
        loop.append(loop)
    with m.track("after"):
        pass
    m.close()
    df = meter.load(str(tmp_path / "runs"))
    assert df["name"].tolist() == ["w", "set-later", "after"] and df.attrs["problems"] == []
    assert df["tag_o"].iloc[0] == "<unprintable Weird>"


@pytest.mark.parametrize("name,value,fix", [
    ("environ", "x", "mapping"), ("clock", object(), "monotonic()"), ("sensors", "x", "list of sensors"),
    ("sensors", [object()], "not a sensor"), ("argv", "cmd --x", "list of strings"), ("argv", [1, 2], "list of strings"),
    ("region", "ZZ", "region='ZZ': unknown grid zone"),
])
def test_objects_given_to_meter_are_checked_at_creation(tmp_path, name, value, fix):
    with pytest.raises(meter.MeterError) as info:
        quiet_meter(tmp_path, **{name: value})
    assert fix in str(info.value)


def test_number_likes_are_accepted_wherever_numbers_are(tmp_path):
    from decimal import Decimal

    m = quiet_meter(tmp_path, write=False, cpu_tdp_w=np.float32(125), pid=np.int64(__import__("os").getpid()),
                    argv=iter(["train.py", "--lr", "3e-4"]))
    assert m._argv == ["train.py", "--lr", "3e-4"]
    with m.track("a"):
        pass
    assert m.flush(Decimal("5")) is True and m.flush(torch.tensor(2.0)) is True
    assert m.flush(10**400) is True  # as long as the platform allows, not OverflowError
    m.close(np.float64(1.0))


@pytest.mark.parametrize("paths", [None, 5, ["x", None], b"runs"], ids=repr)
def test_load_names_what_it_takes(paths):
    with pytest.raises(ConfigError, match="directory"):
        meter.load(paths)


def test_card_functions_check_their_arguments(tmp_path):
    from meter.report import cards

    m = quiet_meter(tmp_path)
    with m.track("train"):
        pass
    m.close()
    with pytest.raises(ConfigError, match="is a directory"):
        cards.update_hf_card([m.run_dir], str(tmp_path), live=False)
    with pytest.raises(ConfigError, match="unknown argument 'bogus'"):
        cards.update_hf_card([m.run_dir], str(tmp_path / "README.md"), bogus=1, live=False)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the cards"):
        cards.write_cards(m.run_dir, str(tmp_path / "ro" / "file" / "cards"), live=False)
    with pytest.raises(ConfigError, match="nope"):
        cards.report([m.run_dir], metric="nope", live=False)
    with pytest.raises(ConfigError, match="nope"):
        cards.report([m.run_dir], baseline="nope", live=False)


@pytest.mark.parametrize("kwargs,fix", [
    ({"forecast_after": "0.05"}, "forecast_after='0.05'"), ({"forecast_after": math.nan}, "in (0, 1]"),
    ({"forecast_after": -1}, "in (0, 1]"), ({"forecast_after": 2.0}, "in (0, 1]"),
    ({"interval_s": math.inf}, "interval_s=inf"), ({"bogus": 1}, "unknown argument 'bogus'"),
    ({"intervall_s": 0.1}, "did you mean interval_s"), ({"carbon": "uk:XYZ"}, "GB-1..GB-17"),
])
@pytest.mark.parametrize("which", ["transformers", "lightning"])
def test_callbacks_check_their_arguments_when_made_not_at_the_first_step(which, kwargs, fix):
    import importlib

    mod = importlib.import_module(f"meter.integrations.{which}")
    cls = mod.MeterCallback
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert fix in str(info.value)


def test_a_callback_given_a_meter_refuses_meter_arguments_it_would_ignore(tmp_path):
    from meter.integrations.transformers import MeterCallback

    m = quiet_meter(tmp_path, write=False)
    with pytest.raises(ConfigError, match="would be ignored"):
        MeterCallback(m, region="FR")
    MeterCallback(m, forecast_after=0.1, budget_kwh=1.0)  # its own arguments are fine
    m.close()
