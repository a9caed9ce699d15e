"""The committed fixtures behind the golden card tests.

    python tests/make_golden_runs.py --golden   # re-render tests/data/golden/ from the committed runs
    python tests/make_golden_runs.py --runs     # regenerate tests/data/runs/ (then review the diff)

--runs writes two small run logs (fake clock, fake GPUs, a RAPL tree on disk) whose host details
are replaced by fixed values. --golden renders the cards from them; use it after a deliberate
format change and review the diff.
"""

import json
import os
import shutil
import sys
import tempfile

import meter
from meter.testing import FakeClock, FakeGPU, FakeNVML, write_rapl_tree

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(HERE, "data", "runs")
GOLDEN = os.path.join(HERE, "data", "golden")
HOST = {"hostname": "golden-host", "os": "Linux 6.1", "machine": "x86_64", "python": "3.11.7", "meter": "0.1.0",
        "cpu_model": "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "cpu_sockets": 2, "logical_cpus": 80, "ram_gb": 384.0,
        "torch_version": "2.13.0", "nvidia_driver": "560.35.03",
        "gpus": [{"index": 0, "name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-0000", "mig": False},
                 {"index": 1, "name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-1111", "mig": False}]}


def one_run(name, run_id, epochs, cache, seconds_per_epoch):
    clock = FakeClock(start=1000.0, wall=1_790_000_000.0 if cache else 1_789_990_000.0)
    nv = FakeNVML([FakeGPU(uuid="GPU-0000", name="NVIDIA A100-SXM4-40GB", power_w=300.0),
                   FakeGPU(uuid="GPU-1111", name="NVIDIA A100-SXM4-40GB", power_w=250.0)], clock=clock)
    tmp = tempfile.mkdtemp()
    tree = write_rapl_tree(os.path.join(tmp, "pc"))
    out = os.path.join(tmp, "runs")
    m = meter.Meter(region="FR", pue=1.1, output_dir=out, nvml=nv, rapl_root=os.path.join(tmp, "pc"), clock=clock,
                    interval_s=3600, run_name=name, sync_cuda=False)

    def spend(s):
        for _ in range(int(s * 10)):
            nv.advance(0.1, dt=0.1)
            for z, w in (("intel-rapl:0", 9.0), ("intel-rapl:1", 6.0), ("intel-rapl:0:1", 0.4), ("intel-rapl:1:0", 0.3)):
                tree.add(z, w)
            m.flush()

    if cache:
        with m.track("cache_build", samples=2000):
            spend(20)
    with m.track("train", tags={"model": name}) as tr:
        for e in range(1, epochs + 1):
            with m.track(f"epoch-{e}") as ep:
                spend(seconds_per_epoch)
                ep.add(samples=2000, tokens=256000, flops=2e15)
                with m.track("evaluate", samples=500, tokens=64000):
                    spend(5)
        tr.add(samples=2000 * epochs, tokens=256000 * epochs, flops=2e15 * epochs)
    with m.track("predict", samples=1000, tokens=128000):
        spend(8)
    m.close()
    src = m.run_dir
    dst = os.path.join(RUNS, run_id)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    info = json.load(open(os.path.join(dst, "run.json")))
    old = info["run_id"]
    info.update(run_id=run_id, host=HOST, pid=1234, argv=["train.py"])
    info["config"]["output_dir"] = "/data/meter-runs"
    for c in info["channels"]:
        if "path" in c.get("details", {}):
            c["details"]["path"] = c["details"]["path"].replace(tmp, "/sys/class")
    info["config"]["rapl_root"] = "/sys/class/powercap"
    json.dump(info, open(os.path.join(dst, "run.json"), "w"), indent=2)
    spans = open(os.path.join(dst, "spans.jsonl")).read().replace(old, run_id)
    open(os.path.join(dst, "spans.jsonl"), "w").write(spans)
    shutil.rmtree(tmp)


def main():
    if "--runs" in sys.argv:
        shutil.rmtree(RUNS, ignore_errors=True)
        os.makedirs(RUNS)
        one_run("bert-recycled", "run-recycled", epochs=2, cache=True, seconds_per_epoch=30)
        one_run("bert-baseline", "run-baseline", epochs=2, cache=False, seconds_per_epoch=60)
    if "--golden" in sys.argv:
        from test_cards import render_all

        os.makedirs(GOLDEN, exist_ok=True)
        for name, text in render_all().items():
            open(os.path.join(GOLDEN, name), "w").write(text)


if __name__ == "__main__":
    main()
