"""Distributed jobs: who owns which sensor, and one job record from real torchrun processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import meter
from meter.distributed import node_id, rank_info
from meter.jobrecord import build_job
from meter.sensors import discover
from meter.testing import write_rapl_tree


def test_rank_info_from_torchrun_and_slurm():
    r = rank_info({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc"})
    assert (r.rank, r.local_rank, r.world_size, r.local_world_size, r.job_id, r.owns_host) == (3, 1, 4, 2, "abc", False)
    s = rank_info({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_ID": "77"})
    assert (s.rank, s.local_world_size, s.job_id, s.launcher, s.owns_host) == (0, 4, "77", "slurm", True)
    assert rank_info({"RANK": "0", "WORLD_SIZE": "1"}) is None and rank_info({}) is None


def test_host_counters_belong_to_local_rank_zero(tmp_path):
    write_rapl_tree(str(tmp_path), {"intel-rapl:0": {"name": "package-0"}, "intel-rapl:0:0": {"name": "dram"}})
    owner = discover(gpus=(), rapl_root=str(tmp_path), host_owner=True)
    other = discover(gpus=(), rapl_root=str(tmp_path), host_owner=False)
    assert [c.key for c in owner.channels] == ["cpu:package-0", "dram:package-0"]
    assert other.channels == []  # neither read nor estimated: the owner's counters contain it
    assert any("local rank 0" in n for n in other.notes)
    # without RAPL every rank estimates its own process, which sums correctly
    assert [c.key for c in discover(gpus=(), rapl_root=str(tmp_path / "none"), host_owner=False).channels] == ["cpu:estimate", "dram:estimate"]


OWN = textwrap.dedent("""
    import json, sys
    import meter
    from meter.testing import FakeGPU, FakeNVML
    out, rapl = sys.argv[1], sys.argv[2]
    nv = FakeNVML([FakeGPU(uuid=f"GPU-{c * 8}", power_w=100.0 * (i + 1)) for i, c in enumerate("abc")])
    m = meter.Meter(output_dir=out, rapl_root=rapl, region="FR", nvml=nv)
    with m.track("train"):
        pass
    print(json.dumps({"keys": [c.key for c in m.discovery.channels],
                      "uuids": [c.details.get("uuid") for c in m.discovery.channels if c.component == "gpu"],
                      "dist": json.load(open(m.run_dir + "/run.json"))["distributed"]}))
    m.close()
""")


def _ranks(tmp_path, world, env_of, script=OWN, timeout=60):
    """``world`` real processes launched as torchrun would (RANK, WORLD_SIZE, ...), no process
    group: the exchange goes through files in the output directory."""
    write_rapl_tree(str(tmp_path / "pc"), {"intel-rapl:0": {"name": "package-0"}, "intel-rapl:0:0": {"name": "dram"}})
    (tmp_path / "own.py").write_text(script)
    procs = []
    for r in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "METER_NODE_ID")}
        env.update({"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(world),
                    "METER_JOB_ID": "own", "METER_OWNERSHIP_TIMEOUT_S": "20", **env_of(r)})
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "own.py"), str(tmp_path / "runs"), str(tmp_path / "pc")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        assert p.returncode == 0, e[-3000:]
        outs.append((json.loads(o.strip().splitlines()[-1]), e))
    return outs


def test_gpus_owned_by_the_lowest_rank_that_sees_them(tmp_path):
    """3 ranks that all see the same 3 GPUs: rank 0 reads them (and the node's RAPL), ranks 1 and
    2 open no GPU channel and no host counter, and each run.json says so and why."""
    outs = _ranks(tmp_path, 3, lambda r: {})
    (r0, _), (r1, _), (r2, _) = outs
    assert r0["keys"] == ["gpu:0", "gpu:1", "gpu:2", "cpu:package-0", "dram:package-0"]
    assert r1["keys"] == [] and r2["keys"] == []
    for r, (o, err) in enumerate(outs):
        d = o["dist"]
        assert d["visible_gpus"] == ["GPU-aaaaaaaa", "GPU-bbbbbbbb", "GPU-cccccccc"]
        assert d["owned_gpus"] == (d["visible_gpus"] if r == 0 else [])
        assert d["gpu_owners"] == {u: 0 for u in d["visible_gpus"]}
        assert (d["owns_host_sensors"], d["host_owner_rank"], d["ownership_method"]) == (r == 0, 0, "files")
        assert d["ownership_fallback"] is None and d["ranks_seen"] == [0, 1, 2]
        assert "could not agree" not in err


def test_per_rank_visible_devices_each_rank_owns_its_gpu(tmp_path):
    """Slurm's gpu-bind: each rank sees one GPU (CUDA_VISIBLE_DEVICES=<rank>): each reads its own;
    ranks on another node (METER_NODE_ID) read that node's host counters."""
    outs = _ranks(tmp_path, 3, lambda r: {"CUDA_VISIBLE_DEVICES": str(r), "METER_NODE_ID": "n0" if r < 2 else "n1"})
    assert [o["uuids"] for o, _ in outs] == [["GPU-aaaaaaaa"], ["GPU-bbbbbbbb"], ["GPU-cccccccc"]]
    assert [o["keys"] for o, _ in outs] == [["gpu:0", "cpu:package-0", "dram:package-0"], ["gpu:1"],
                                            ["gpu:2", "cpu:package-0", "dram:package-0"]]
    assert [o["dist"]["host_owner_rank"] for o, _ in outs] == [0, 0, 2]
    assert [o["dist"]["node"] for o, _ in outs] == ["n0", "n0", "n1"]


def test_a_rank_that_never_answers_means_measuring_what_this_rank_sees(tmp_path):
    """World size 2 but only rank 0 starts: after METER_OWNERSHIP_TIMEOUT_S it measures every GPU it
    sees and its node's host counters, warns, and records why."""
    (o, err), = _ranks(tmp_path, 1, lambda r: {"WORLD_SIZE": "2", "METER_OWNERSHIP_TIMEOUT_S": "0.5"})
    assert o["keys"] == ["gpu:0", "gpu:1", "gpu:2", "cpu:package-0", "dram:package-0"]
    d = o["dist"]
    assert d["owned_gpus"] == d["visible_gpus"] and d["ranks_seen"] == [0] and d["host_owner_rank"] is None
    assert d["ownership_fallback"] == "rank(s) 1 did not answer within 0.5 s (METER_OWNERSHIP_TIMEOUT_S)"
    assert "could not agree with the other ranks" in err


def test_job_totals_add_energy_and_counts_and_take_the_longest_duration():
    def rank(r, node, e, dur, uuid):
        return {"rank": r, "node": node, "host": "h", "energy_j": e, "owns_host_sensors": r == 0,
                "components": {"gpu": e}, "stages": {"train": {"name": "train", "depth": 0, "energy_j": e,
                                                               "duration_s": dur, "spans": 1, "samples": 8}},
                "devices": {uuid: {"key": "gpu:0", "component": "gpu", "uuid": uuid, "energy_j": e}}}
    job = build_job([rank(1, "n0", 12.5, 2.5, "GPU-b"), rank(0, "n0", 10.0, 2.0, "GPU-a"), rank(2, "n1", 1.0, 1.0, "GPU-c")],
                    job_id="j", world_size=4, source="disk")
    assert job["stages"]["train"] == {"name": "train", "depth": 0, "ranks": [0, 1, 2], "duration_s": 2.5,
                                      "energy_j": 23.5, "samples": 24}
    assert job["missing_ranks"] == [3] and job["ranks_reported"] == [0, 1, 2] and job["energy_j"] == 23.5
    assert {n: (v["ranks"], v["energy_j"]) for n, v in job["nodes"].items()} == {"n0": ([0, 1], 22.5), "n1": ([2], 1.0)}
    assert {u: d["energy_j"] for u, d in job["devices"].items()} == {"GPU-a": 10.0, "GPU-b": 12.5, "GPU-c": 1.0}
    assert job["devices_measured_twice"] == {}


SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch, torch.distributed as dist
    import meter
    from meter.distributed import write_job_record
    dist.init_process_group("gloo")
    out, rapl = sys.argv[1], sys.argv[2]
    m = meter.Meter(output_dir=out, rapl_root=rapl, region="FR", gpus="none")
    with m.track("train", samples=16):
        t = time.process_time()
        while time.process_time() - t < 0.3:
            torch.randn(64, 64) @ torch.randn(64, 64)
        dist.barrier()
    path = write_job_record(m)
    if dist.get_rank() == 0:
        print("JOB", path)
    m.close()
    dist.destroy_process_group()
""")


def test_torchrun_gloo_job_record(tmp_path):
    pytest.importorskip("torch")
    write_rapl_tree(str(tmp_path / "pc"), {"intel-rapl:0": {"name": "package-0"}})  # no dram zone
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "runs"
    env = {**os.environ, "METER_JOB_ID": "test-job", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(out), str(tmp_path / "pc")], capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = sorted(d for d in os.listdir(out) if os.path.isdir(out / d))
    assert [r[-5:] for r in runs] == ["rank0", "rank1"]
    infos = [json.load(open(out / r / "run.json")) for r in runs]
    assert [i["distributed"]["rank"] for i in infos] == [0, 1]
    keys = [[c["key"] for c in i["channels"]] for i in infos]
    assert keys[0] == ["cpu:package-0", "dram:estimate"]  # the node's host counter, read once
    assert keys[1] == ["dram:estimate"]  # rank 1 measures only what is its own
    job = json.load(open(out / "job-test-job.json"))
    assert job["world_size"] == 2 and job["job_id"] == "test-job"
    train = job["stages"]["train"]
    df = meter.load(out)
    assert train["ranks"] == [0, 1] and train["samples"] == 32 and job["missing_ranks"] == []
    assert train["energy_j"] == pytest.approx(df[df["name"] == "train"]["energy_j"].sum())
    assert train["duration_s"] == pytest.approx(df[df["name"] == "train"]["duration_s"].max())
    assert sorted(df["rank"]) == [0, 1] and set(df["node"]) == {node_id({})}
    assert [i["distributed"]["node"] for i in infos] == [node_id({})] * 2


def test_node_id_is_meter_node_id_else_boot_id_else_hostname():
    assert node_id({"METER_NODE_ID": "rack3-n7"}) == "rack3-n7"
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert node_id({}) == f.read().strip()


FAILING = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    import meter
    from meter.distributed import write_job_record
    dist.init_process_group("gloo")
    out, rapl = sys.argv[1], sys.argv[2]
    rank = dist.get_rank()
    m = meter.Meter(output_dir=out, rapl_root=rapl, region="FR", gpus="none")
    with m.track("train", samples=8):
        time.sleep(0.2)
    if rank == 2:  # exits early, cleanly, without reporting
        m.close()
        sys.exit(0)
    if rank == 1:  # hangs until rank 0 has written the record (or 60 s)
        t = time.monotonic()
        while not any(f.startswith("job-") for f in os.listdir(out)) and time.monotonic() - t < 60:
            time.sleep(0.05)
        m.close()
        sys.exit(0)
    t = time.monotonic()
    path = write_job_record(m)
    print("JOB", path, "WAITED", time.monotonic() - t, flush=True)
    m.close()
""")


def test_hanging_and_exited_ranks_are_missing_not_a_hang(tmp_path):
    """3 real torchrun ranks on gloo: rank 1 hangs, rank 2 exits early; rank 0 writes the record
    within METER_GATHER_TIMEOUT_S with both in missing_ranks, with numpy hidden."""
    pytest.importorskip("torch")
    write_rapl_tree(str(tmp_path / "pc"), {"intel-rapl:0": {"name": "package-0"}})
    script = tmp_path / "job.py"
    script.write_text(FAILING)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "numpy.py").write_text("raise ModuleNotFoundError('numpy is hidden in this test', name='numpy')\n")
    out = tmp_path / "runs"
    env = {**os.environ, "METER_JOB_ID": "fail-job", "OMP_NUM_THREADS": "1", "METER_GATHER_TIMEOUT_S": "3",
           "PYTHONPATH": str(shadow) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                        str(script), str(out), str(tmp_path / "pc")], capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("JOB"))
    waited = float(line.split()[-1])
    assert 2.9 <= waited < 6.0  # waited the timeout for the missing ranks, and not longer
    job = json.load(open(out / "job-fail-job.json"))
    assert job["world_size"] == 3 and job["ranks_reported"] == [0] and job["missing_ranks"] == [1, 2]
    assert job["stages"]["train"]["samples"] == 8  # only the rank that reported
    assert "did not report" in p.stderr


AGENT = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    import meter
    from meter.distributed import write_job_record
    dist.init_process_group("gloo")
    out, rapl = sys.argv[1], sys.argv[2]
    rank = dist.get_rank()
    m = meter.Meter(output_dir=out, rapl_root=rapl, region="FR", gpus="none")
    with m.track("train", samples=4):
        if rank == 1 and os.environ.get("MISMATCH"):
            with m.track("extra"):
                time.sleep(0.05)
        time.sleep(0.1)
    write_job_record(m)
    m.close()
    dist.destroy_process_group()
""")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("node_ids,readers", [(("same", "same"), 1), (("n-a", "n-b"), 2)])
def test_two_agents_on_one_host_read_host_counters_once_per_node(tmp_path, node_ids, readers):
    """Two torchrun agents (static rendezvous, one rank each) on this host: with one METER_NODE_ID the
    RAPL counter is read by rank 0 only; declared as two nodes, by each node's lowest rank."""
    pytest.importorskip("torch")
    write_rapl_tree(str(tmp_path / "pc"), {"intel-rapl:0": {"name": "package-0"}})
    (tmp_path / "agent.py").write_text(AGENT)
    port = _free_port()
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    procs = []
    for i, nid in enumerate(node_ids):
        env = {**os.environ, "METER_NODE_ID": nid, "METER_JOB_ID": "agents", "OMP_NUM_THREADS": "1",
               "METER_GATHER_TIMEOUT_S": "20", "MISMATCH": "1"}
        procs.append(subprocess.Popen([torchrun, "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1",
                                       "--master_addr=127.0.0.1", f"--master_port={port}", str(tmp_path / "agent.py"),
                                       str(tmp_path / "runs"), str(tmp_path / "pc")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    errs = []
    for p in procs:
        _, e = p.communicate(timeout=240)
        errs.append(e)
        assert p.returncode == 0, e[-3000:]
    job = json.load(open(tmp_path / "runs" / "job-agents.json"))
    assert job["world_size"] == 2 and job["missing_ranks"] == []
    rapl = [d for d in job["devices"].values() if d["key"] == "cpu:package-0"]
    assert [d["ranks"] for d in rapl] == ([[0]] if readers == 1 else [[0], [1]])
    assert {n: v["host_sensors_rank"] for n, v in job["nodes"].items()} == (
        {"same": 0} if readers == 1 else {"n-a": 0, "n-b": 1})
    # rank 1 ran a stage rank 0 did not: reported in the record and warned on rank 0
    assert job["stage_mismatch"]["stages_not_on_every_rank"] == {"train/extra": [1]}
    assert job["stages"]["train"]["ranks"] == [0, 1] and job["stages"]["train"]["samples"] == 8
    assert "the ranks' stages differ" in errs[0]
    # the report renders the job as one job, built from the per-rank logs on disk
    rep = subprocess.run([sys.executable, "-m", "meter", "report", str(tmp_path / "runs")], capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    assert "Job `agents`: 2 ranks" in rep.stdout and "Per node" in rep.stdout and "Per rank" in rep.stdout
    assert "Sweep overview" not in rep.stdout and "`train/extra` ran on rank(s) 1 only" in rep.stdout


ALL_VISIBLE = textwrap.dedent("""
    import json, os, sys, time
    import torch.distributed as dist
    import meter
    from meter.distributed import write_job_record
    dist.init_process_group("gloo")
    out, rapl = sys.argv[1], sys.argv[2]
    m = meter.Meter(output_dir=out, rapl_root=rapl, region="FR", interval_s=0.05)
    with m.track("train", samples=2):
        time.sleep(0.3)
        dist.barrier()
    write_job_record(m)
    m.close()
""")


def test_torchrun_three_ranks_all_gpus_visible_each_gpu_read_once(tmp_path):
    """3 real torchrun ranks on gloo that all see the same 3 emulated GPUs (constant 50, 100,
    150 W): the exchange goes through the process group's store, rank 0 reads all three, and the
    job's GPU energy is 300 W x the train time, not three times that."""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for the emulated NVML; .ci/run's machine has gcc")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import fake_nvml

    lib = fake_nvml.build(str(tmp_path / "lib"))
    write_rapl_tree(str(tmp_path / "pc"), {"intel-rapl:0": {"name": "package-0"}})
    (tmp_path / "job.py").write_text(ALL_VISIBLE)
    env = {**os.environ, **fake_nvml.env(lib, [(50, 50, 1, 0), (100, 100, 1, 0), (150, 150, 1, 0)]),
           "METER_JOB_ID": "all3", "OMP_NUM_THREADS": "1", "METER_GATHER_TIMEOUT_S": "20"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=3",
                        str(tmp_path / "job.py"), str(tmp_path / "runs"), str(tmp_path / "pc")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    job = json.load(open(tmp_path / "runs" / "job-all3.json"))
    infos = [json.load(open(os.path.join(r["run_dir"], "run.json")))["distributed"] for r in job["ranks"]]
    assert [i["ownership_method"] for i in infos] == ["store"] * 3
    assert [len(i["owned_gpus"]) for i in infos] == [3, 0, 0] and [len(i["visible_gpus"]) for i in infos] == [3, 3, 3]
    gpus = {d["uuid"]: d for d in job["devices"].values() if d.get("uuid")}
    assert len(gpus) == 3 and all(d["ranks"] == [0] for d in gpus.values())
    r0_train = job["ranks"][0]["stages"]["train"]
    assert job["stages"]["train"]["gpu_energy_j"] == pytest.approx(300.0 * r0_train["duration_s"], rel=0.02)
    assert job["stages"]["train"]["samples"] == 6 and job["devices_measured_twice"] == {}
