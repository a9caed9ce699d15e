"""Plain PyTorch loop helpers with real torch."""

import pytest

torch = pytest.importorskip("torch")

import meter  # noqa: E402
from meter.integrations.torch import FlopCount, batch_counts, counted, stage, sync  # noqa: E402
from meter.testing import FakeSensor  # noqa: E402
from tests.device_reads import DeviceReads  # noqa: E402


@pytest.fixture
def m(clock):
    with meter.Meter(write=False, sensors=[FakeSensor.counter()], clock=clock, interval_s=3600) as m:
        yield m


def test_flops_of_linear_match_analytic_count(m):
    batch, d_in, d_out = 32, 64, 16
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in)
    with stage("forward", flops=True, meter_=m) as span:
        layer(x)
    assert span.result.counts["flops"] == 2 * batch * d_in * d_out  # one multiply-add = 2 FLOPs


def test_flops_forward_and_backward(m):
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(5, 8, requires_grad=True)
    with m.track("step") as span, FlopCount():
        layer(x).sum().backward()
    # forward 2*5*8*4; backward: grad wrt input and wrt weight, each 2*5*8*4
    assert span.result.counts["flops"] == 3 * 2 * 5 * 8 * 4


def test_counted_loop_sums_samples_tokens_and_names_children_by_the_steps_run(tmp_path, clock):
    data = [{"input_ids": torch.ones(4, 10, dtype=torch.long), "attention_mask": torch.tensor([[1] * 10, [1] * 5 + [0] * 5, [1] * 3 + [0] * 7, [1] * 10])}
            for _ in range(7)]
    with meter.Meter(sensors=[FakeSensor.counter()], clock=clock, interval_s=3600, output_dir=str(tmp_path)) as m:
        with m.track("epoch") as ep:
            for _batch in counted(data, every=3):
                pass
        assert ep.result.counts == {"samples": 28, "tokens": 28 * 7}
        m.flush()
        df = meter.load(m.run_dir)
    children = df[df["parent_id"] == ep.result.span_id]
    assert children["name"].tolist() == ["steps-0-2", "steps-3-5", "steps-6-6"]  # the last group ran one step
    assert children["samples"].tolist() == [12, 12, 4]


def test_counted_stopped_early_names_the_child_by_what_ran(tmp_path, clock):
    with meter.Meter(sensors=[FakeSensor.counter()], clock=clock, interval_s=3600, output_dir=str(tmp_path)) as m:
        with m.track("epoch") as ep:
            for i, _ in enumerate(counted([torch.zeros(2, 3)] * 100, every=10)):
                if i == 31:
                    break
            assert meter.current_span() is ep  # the child closed with the loop
        m.flush()
        df = meter.load(m.run_dir)
    assert df[df["depth"] == 1]["name"].tolist() == ["steps-0-9", "steps-10-19", "steps-20-29", "steps-30-31"]
    assert ep.result.counts == {"samples": 64}


def test_counted_never_reads_the_device_per_step(m):
    DeviceReads.reads = 0
    masks = [torch.ones(2, 5, dtype=torch.long).as_subclass(DeviceReads) for _ in range(50)]
    data = [{"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": mk} for mk in masks]
    with m.track("epoch") as ep:
        for _ in counted(data, every=25):
            pass
    assert ep.result.counts["tokens"] == 500
    # one read per child span and one for the epoch at each child's close: 4, not one per step
    assert DeviceReads.reads == 4


def test_counted_shows_joules_and_watts_in_a_tqdm_bar(clock):
    from io import StringIO

    from tqdm import tqdm

    sensor = FakeSensor.counter()
    buf = StringIO()
    with meter.Meter(write=False, sensors=[sensor], clock=clock, interval_s=3600) as m, m.track("epoch"):
        bar = tqdm(range(4), file=buf, mininterval=0, ascii=True)
        for _ in counted(bar, progress=True, progress_every_s=0):
            sensor.values["gpu:0"] += 50.0  # 50 J per step over 0.5 s: 100 W
            clock.advance(0.5)
        bar.close()
    text = buf.getvalue()
    assert "J=150, W=100" in text  # after 3 steps
    assert "J=200, W=100" in text  # at the end


def test_progress_needs_a_bar(m):
    with pytest.raises(meter.ConfigError, match="tqdm bar"):
        list(counted([1], progress=True))


def test_batch_counts_shapes():
    assert batch_counts((torch.zeros(6, 3), torch.zeros(6))) == (6, None)
    assert batch_counts(torch.zeros(2, 5)) == (2, None)
    assert batch_counts({"pixel_values": torch.zeros(3, 3, 8, 8)}) == (3, None)
    assert batch_counts({"input_ids": torch.zeros(2, 4, dtype=torch.long)}) == (2, 8)


def test_bad_every_is_a_clear_error(m):
    with pytest.raises(meter.ConfigError, match="positive number of steps"):
        list(counted([1, 2], every=0))


def test_sync_does_not_initialise_cuda():
    # Waiting on CUDA must never be what starts a CUDA context (several hundred MB per GPU).
    assert sync() is None
    assert not torch.cuda.is_initialized()


def test_card_sums_sub_stage_counts_for_a_parent_that_counted_none_and_says_so(tmp_path, clock):
    from meter.report import model, render

    sensor = FakeSensor.counter()
    with meter.Meter(sensors=[sensor], clock=clock, interval_s=3600, output_dir=str(tmp_path)) as m:
        with m.track("finetune"):
            for e in range(2):
                with m.track(f"epoch-{e + 1}"):
                    for _ in counted([torch.zeros(4, 3)] * 5):
                        sensor.values["gpu:0"] += 2.0
                        clock.advance(0.1)
                with m.track("evaluate", samples=7):
                    sensor.values["gpu:0"] += 5.0
        run_dir = m.run_dir
    card = model.build(run_dir, live=False)
    st = {s["path"]: s for s in card["runs"][0]["stages"]}
    ft = st["finetune"]
    assert ft["samples"] == 40 and ft["counts_from_children"] == ["samples"]  # the epochs, not the evaluations
    assert ft["energy_per_sample_j"] == pytest.approx(20.0 / 40)  # 10 batches x 2 J; evaluation excluded
    assert st["finetune/epoch-1"]["counts_from_children"] == []
    md = render.markdown(card)
    assert "finetune †" in md and "finetune: samples: the sum of its sub-stages" in md
