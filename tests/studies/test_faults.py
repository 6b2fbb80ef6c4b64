"""The study runner under faults (issue 13): nothing lost, nothing silently wrong.

Each test reproduces one failure of the issue on a study of a few tiny runs (logistic regression
on 200 digits), so the set runs in CI in seconds: --fresh on a directory the runner did not
write, killed parents and orphaned workers, two processes on one runs directory, corrupt and
foreign results and checkpoints, pickled objects in checkpoints, a corrupt plan, a kill during a
checkpoint write, disk-full errors, threads and --jobs.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import emulator.studies.store as store
import emulator.studies.study as study
from emulator.studies.store import CorruptFile, load_checkpoint, read_result, save_checkpoint
from emulator.studies.study import StudyPlan, checkpoint_path, result_path, run_study
from emulator.studies.workers import pool_size, worker_cap

ROOT = Path(__file__).resolve().parents[2]
TINY = StudyPlan("tiny", models=("logreg",), methods=("sgld", "vc"), seeds=(0,), epochs=2, burnin=1, n_train=200,
                 n_test=100, lanes=64, batch_size=32)
CLI_TINY = ["--preset", "quick", "--models", "logreg", "--lrs", "0.5", "--n-train", "200", "--n-test", "100",
            "--lanes", "64", "--batch-size", "32"]


def quiet(_msg: str) -> None:
    pass


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> list[dict]:
    """The uninterrupted results of TINY."""
    return run_study(TINY, tmp_path_factory.mktemp("clean"), progress=quiet)


def metrics(results: list[dict]) -> list[tuple]:
    return [(r["spec"]["method"], r["metrics"], r["last"], r["reliability"]) for r in results]


# ---- 1. --fresh deletes only what the runner wrote ---------------------------------------------


def test_fresh_refuses_a_directory_the_runner_did_not_write(tmp_path, monkeypatch) -> None:
    proj = tmp_path / "proj"
    (proj / "notes").mkdir(parents=True)
    (proj / "notes" / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match=r"--fresh refuses to delete .*proj'?: it is not a study directory"):
        run_study(TINY, proj, fresh=True, progress=quiet)
    assert (proj / "notes" / "thesis.txt").read_text() == "x"
    monkeypatch.chdir(proj / "notes")
    for target in (".", "..", str(proj)):
        with pytest.raises(ValueError, match="it is the working directory or one of its parents"):
            run_study(TINY, target, fresh=True, progress=quiet)
    assert (proj / "notes" / "thesis.txt").read_text() == "x"


def test_fresh_deletes_only_the_runners_files(tmp_path) -> None:
    out = tmp_path / "s"
    first = run_study(TINY, out, progress=quiet)
    mine = [out / "mine.txt", out / "runs" / "mine.json", out / "runs" / "checkpoints" / "keep.txt"]
    for p in mine:
        p.write_text("user data")
    msgs: list[str] = []
    again = run_study(TINY, out, fresh=True, progress=msgs.append)
    assert "0 done" in msgs[0] and metrics(again) == metrics(first)  # recomputed
    assert all(p.read_text() == "user data" for p in mine)
    assert (out / store.MARKER).is_file()


def test_fresh_also_deletes_what_the_runner_wrote_before_checksums(tmp_path, clean) -> None:
    """A study directory of the runner before sealed results and .ckpt checkpoints: --fresh removes its
    unsealed results (their spec is their run) and its <run key>.pt checkpoints, and recomputes."""
    out = tmp_path / "s"
    runs = out / "runs"
    (runs / "checkpoints").mkdir(parents=True)
    (out / "plan.json").write_text(json.dumps(TINY.to_dict()))  # no marker: an old study directory
    spec = TINY.runs()[0]
    old = {k: v for k, v in clean[0].items() if k not in ("integrity", "torch_threads")}
    old["metrics"] = {**old["metrics"], "nll": 123.0}  # a stale result that must not be reused
    (runs / f"{spec.key}.json").write_text(json.dumps(old))
    (runs / "checkpoints" / f"{spec.key}.pt").write_bytes(b"PK\x03\x04 torch.save zip")
    keep = [runs / "checkpoints" / "notes.pt", runs / "other.json"]
    keep[0].write_bytes(b"PK\x03\x04 not a run key")
    keep[1].write_text(json.dumps({"metrics": {}, "spec": {}}))
    again = run_study(TINY, out, fresh=True, progress=quiet)
    assert metrics(again) == metrics(clean)
    assert not (runs / "checkpoints" / f"{spec.key}.pt").exists()
    assert all(p.exists() for p in keep)


# ---- 2. bounded, supervised workers ---------------------------------------------------------------


def test_workers_are_bounded_by_tasks_and_cores(monkeypatch) -> None:
    assert pool_size(100_000, 2) == min(2, worker_cap())
    assert pool_size(40, 2) <= 2 and pool_size(1, 10) == 1
    assert worker_cap() <= (os.cpu_count() or 1)
    import emulator.studies.toy as toy

    seen: list[int] = []

    class Stop(Exception):
        pass

    def record(workers: int, *args: object) -> object:
        seen.append(workers)
        raise Stop

    monkeypatch.setattr(toy, "supervised_pool", record)
    settings = toy.ToySettings(alphas=(2e-3,), variants=("vc", "naive"), chains=4, burn=0, collect=1e-3,
                               min_collect_steps=1)
    if worker_cap() > 1:
        with pytest.raises(Stop):
            toy.run_toy(settings, jobs=100_000, verbose=False)
        assert seen == [2]  # 2 tasks: 2 workers, not 100,000


def _descendants(pid: int) -> set[int]:
    """Live (not zombie) processes below ``pid``."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _start_long_study(tmp_path: Path) -> tuple[subprocess.Popen, Path, set[int]]:
    err = tmp_path / "stderr"
    with err.open("w") as f:
        p = subprocess.Popen([sys.executable, "-m", "emulator.cli", "train", *CLI_TINY, "--methods", "sgld,vc",
                              "--seeds", "0,1", "--epochs", "400", "--burnin", "1", "--jobs", "2", "--out",
                              str(tmp_path / "s")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until a worker trains (reports its first epoch)
        if "epoch 1/400" in err.read_text() or p.poll() is not None:
            break
        time.sleep(0.1)
    assert p.poll() is None, err.read_text()
    return p, err, _descendants(p.pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_parent_leaves_no_orphan(tmp_path) -> None:
    p, _, kids = _start_long_study(tmp_path)
    if worker_cap() > 1:
        assert kids, "the study started no worker process"
    p.kill()  # SIGKILL: the parent cannot forward anything
    p.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "workers outlived their killed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_and_reaps_the_workers(tmp_path) -> None:
    p, err, kids = _start_long_study(tmp_path)
    workers = {k for k in kids if b"spawn_main" in _cmdline(k)}
    if worker_cap() > 1:
        assert workers, "the study started no worker process"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 128 + signal.SIGTERM
    # the parent reaps its workers before it exits ...
    left = {k: _cmdline(k)[:120] for k in workers if _alive(k)}
    assert not left, f"workers survived their parent's SIGTERM: {left}"
    # ... while multiprocessing's resource tracker leaves on its own once the parent's pipe closes
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = {k: _cmdline(k)[:120] for k in kids if _alive(k)}
    assert not left, f"helper processes outlived the study: {left}"
    assert "interrupted by SIGTERM; workers stopped; rerun the same command to resume" in err.read_text()
    assert "Traceback" not in err.read_text()  # no thread of the pool reports an error either


def test_sigterm_stops_the_gaussian_toy_without_a_traceback(tmp_path) -> None:
    """`lpsgld gaussian --jobs 2` under SIGTERM: exit 143, the message, and no traceback from the pool's
    threads (Executor.map cancels its futures; the broken pool's manager must not report them)."""
    err = tmp_path / "stderr"
    with err.open("w") as f:
        p = subprocess.Popen([sys.executable, "-m", "emulator.cli", "gaussian", "--jobs", "2", "--out",
                              str(tmp_path / "g")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "% of" not in err.read_text() and p.poll() is None:
        time.sleep(0.1)
    assert p.poll() is None, err.read_text()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 128 + signal.SIGTERM
    text = err.read_text()
    assert "interrupted by SIGTERM; workers stopped" in text and "Traceback" not in text, text[-2000:]


def test_sigterm_in_a_single_process_study_stops_it_cleanly(tmp_path, clean) -> None:
    from emulator.studies.workers import Interrupted

    before = signal.getsignal(signal.SIGTERM)
    spec = TINY.runs()[1]

    def term(msg: str) -> None:
        if f"{spec.key}: epoch 1/2" in msg:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        run_study(TINY, tmp_path / "s", jobs=1, progress=term)
    assert signal.getsignal(signal.SIGTERM) is before
    assert load_checkpoint(checkpoint_path(tmp_path / "s" / "runs", spec.key), spec.key)["epoch"] == 1
    assert metrics(run_study(TINY, tmp_path / "s", progress=quiet)) == metrics(clean)


# ---- 3. a lock per run: two processes on one runs directory -------------------------------------


def test_a_run_locked_by_another_process_is_skipped_then_waited_for(tmp_path, clean) -> None:
    spec = TINY.runs()[1]
    runs = tmp_path / "runs"
    data = study.prepare_data(TINY)
    with store.run_lock(runs, spec.key, wait=False) as mine:
        assert mine
        assert study._run_one(spec, runs, data, wait=False, progress=quiet) is None  # held: not trained twice
    res = study._run_one(spec, runs, data, wait=False, progress=quiet)
    assert res is not None and metrics([res]) == metrics(clean[1:])


def test_two_processes_on_one_runs_directory_train_each_run_once(tmp_path) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "emulator.cli", "train", *CLI_TINY, "--methods", "sgld,vc", "--seeds", "0,1",
            "--epochs", "2", "--burnin", "1", "--jobs", "1", "--runs", str(runs)]
    procs = [subprocess.Popen([*argv, "--out", str(tmp_path / name)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trained = [{line.split(":")[0] for line in err.splitlines() if ": epoch 1/2 " in line} for _, err in outs]
    assert not trained[0] & trained[1], "a run was trained by both processes"
    assert len(trained[0] | trained[1]) == 4, trained
    a, b = (json.loads((tmp_path / n / "results.json").read_text())["runs"] for n in ("a", "b"))
    assert a == b and len(a) == 4
    assert not list(runs.glob("**/*.tmp"))


# ---- 4, 11. corrupt, foreign and pickled files ----------------------------------------------------


def _partial_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A study whose vc run stopped after epoch 1, leaving its checkpoint; returns (out, checkpoint)."""
    out = tmp_path / "s"
    spec = TINY.runs()[1]

    def stop(msg: str) -> None:
        if f"{spec.key}: epoch 1/2" in msg:
            raise Interrupt(msg)

    with pytest.raises(Interrupt):
        run_study(TINY, out, progress=stop)
    ckpt = checkpoint_path(out / "runs", spec.key)
    assert load_checkpoint(ckpt, spec.key)["epoch"] == 1
    return out, ckpt


def _flip_last_byte(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "bit flip", "foreign"])
def test_a_corrupt_checkpoint_is_quarantined_and_the_run_recomputed(tmp_path, clean, damage: str) -> None:
    out, ckpt = _partial_checkpoint(tmp_path)
    data = ckpt.read_bytes()
    other = TINY.runs()[0].key
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(300),
                      "bit flip": _flip_last_byte(data),
                      "foreign": data.replace(TINY.runs()[1].key.encode(), other.encode(), 1)}[damage])
    with pytest.raises(CorruptFile, match=f"{ckpt}: "):
        run_study(TINY, out, strict=True, progress=quiet)
    msgs: list[str] = []
    res = run_study(TINY, out, progress=msgs.append)
    warning = next(m for m in msgs if m.startswith("warning:"))
    assert str(ckpt) in warning and "the run starts over" in warning
    assert metrics(res) == metrics(clean)
    assert len(list((out / "runs" / "quarantine").iterdir())) == 1


def test_a_resumed_checkpoint_gives_the_uninterrupted_result(tmp_path, clean) -> None:
    out, _ = _partial_checkpoint(tmp_path)
    msgs: list[str] = []
    assert metrics(run_study(TINY, out, progress=msgs.append)) == metrics(clean)
    assert any("resumed after epoch 1" in m for m in msgs)


def test_a_checkpoint_that_carries_a_pickled_object_is_refused(tmp_path, clean) -> None:
    out, ckpt = _partial_checkpoint(tmp_path)
    pwned = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # executed by an unrestricted unpickler
            return (os.system, (f"touch {pwned}",))

    spec = TINY.runs()[1]
    buf = io.BytesIO()
    torch.save({"spec": spec.to_dict(), "epoch": 1, "evil": Evil()}, buf)
    payload = buf.getvalue()
    import hashlib

    head = json.dumps({"key": spec.key, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)})
    ckpt.write_bytes(store.CHECKPOINT_MAGIC + head.encode() + b"\n" + payload)  # a valid checksum
    with pytest.raises(CorruptFile, match="refused: not plain types and tensors"):
        load_checkpoint(ckpt, spec.key)
    msgs: list[str] = []
    assert metrics(run_study(TINY, out, progress=msgs.append)) == metrics(clean)
    assert not pwned.exists()
    assert any("refused" in m and str(ckpt) in m for m in msgs)


def test_checkpoints_hold_plain_types_and_tensors(tmp_path) -> None:
    _, ckpt = _partial_checkpoint(tmp_path)
    raw = ckpt.read_bytes()
    payload = raw[len(store.CHECKPOINT_MAGIC):].partition(b"\n")[2]
    torch.load(io.BytesIO(payload), weights_only=True)  # raises on anything but plain types and tensors
    with pytest.raises(TypeError, match="plain types and tensors only, got PosixPath"):
        save_checkpoint(tmp_path / "x.ckpt", "k", {"p": Path(".")})


@pytest.mark.parametrize("damage", ["foreign", "edited", "garbage", "legacy of another run"])
def test_a_corrupt_or_foreign_result_is_quarantined_and_recomputed(tmp_path, clean, damage: str) -> None:
    out = tmp_path / "s"
    run_study(TINY, out, progress=quiet)
    a, b = (result_path(out / "runs", s.key) for s in TINY.runs())
    res = json.loads(b.read_text())
    if damage == "foreign":  # another run's valid JSON under this run's name
        b.write_text(a.read_text())
    elif damage == "edited":  # one changed value
        res["metrics"]["nll"] += 1e-4
        b.write_text(json.dumps(res))
    elif damage == "garbage":
        b.write_bytes(b"\x00" * 10)
    else:  # a result from before checksums, but its spec is another run's
        del res["integrity"]
        res["spec"]["seed"] = 7
        b.write_text(json.dumps(res))
    with pytest.raises(CorruptFile, match=f"{b}: "):
        run_study(TINY, out, strict=True, progress=quiet)
    msgs: list[str] = []
    again = run_study(TINY, out, progress=msgs.append)
    assert str(b) in msgs[0] and "is recomputed" in msgs[0] and "1 done" in msgs[1]
    assert metrics(again) == metrics(clean)
    read_result(b, TINY.runs()[1].key)


def test_a_result_from_before_checksums_is_kept_when_its_spec_is_this_run(tmp_path, clean) -> None:
    out = tmp_path / "s"
    run_study(TINY, out, progress=quiet)
    b = result_path(out / "runs", TINY.runs()[1].key)
    res = json.loads(b.read_text())
    del res["integrity"]
    b.write_text(json.dumps(res))
    msgs: list[str] = []
    again = run_study(TINY, out, strict=True, progress=msgs.append)
    assert "sealed as is" in msgs[0] and "2 done" in msgs[1] and metrics(again) == metrics(clean)
    read_result(b, TINY.runs()[1].key)


def test_a_corrupt_plan_file_is_rewritten(tmp_path, clean) -> None:
    out = tmp_path / "s"
    run_study(TINY, out, progress=quiet)
    (out / "plan.json").write_bytes(b"")  # what a kill during an in-place rewrite left
    msgs: list[str] = []
    assert metrics(run_study(TINY, out, progress=msgs.append)) == metrics(clean)
    assert "plan.json is unreadable" in msgs[0]
    assert json.loads((out / "plan.json").read_text()) == json.loads(json.dumps(TINY.to_dict()))


def test_a_kill_during_a_checkpoint_write_loses_at_most_that_epoch(tmp_path, clean) -> None:
    out = tmp_path / "s"
    code = """
import os, signal, sys
import emulator.studies.store as store
from emulator.studies.study import StudyPlan, run_study
writes = []
real = store.os.replace
def replace(src, dst):
    if str(dst).endswith(".ckpt"):
        writes.append(dst)
        if len(writes) == 2:  # the epoch-2 checkpoint is written, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
store.os.replace = replace
plan = StudyPlan("tiny", models=("logreg",), methods=("vc",), seeds=(0,), epochs=3, burnin=1, n_train=200,
                 n_test=100, lanes=64, batch_size=32)
run_study(plan, sys.argv[1], progress=lambda m: None)
"""
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    plan = dataclasses.replace(TINY, methods=("vc",), epochs=3)
    key = plan.runs()[0].key
    assert load_checkpoint(checkpoint_path(out / "runs", key), key)["epoch"] == 1
    msgs: list[str] = []
    resumed = run_study(plan, out, progress=msgs.append)
    assert any("resumed after epoch 1" in m for m in msgs)
    assert metrics(resumed) == metrics(run_study(plan, tmp_path / "whole", progress=quiet))


def test_disk_full_names_the_path(tmp_path, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    target = tmp_path / "r.json"
    with pytest.raises(OSError, match=f"cannot write {target}: no space left on the device"):
        store.atomic_write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    from emulator.cli import main

    assert main(["train", *CLI_TINY, "--methods", "vc", "--seeds", "0", "--epochs", "2", "--burnin", "1",
                 "--out", str(tmp_path / "s")]) == 2


def test_disk_full_in_the_cli_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from emulator.cli import main

    monkeypatch.setattr(store.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert main(["train", *CLI_TINY, "--methods", "vc", "--seeds", "0", "--epochs", "2", "--burnin", "1",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "lpsgld: error: [Errno 28] cannot write" in err and "no space left on the device" in err
    assert "Traceback" not in err


# ---- 5. bit-reproducible across --jobs ------------------------------------------------------------


def test_float_runs_do_not_depend_on_jobs_or_the_callers_threads(tmp_path, monkeypatch) -> None:
    plan = dataclasses.replace(TINY, methods=("sgld",), seeds=(0, 1))
    threads = torch.get_num_threads()
    seen: list[int] = []
    real = study.train_run

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(study, "train_run", spy)
    torch.set_num_threads(2)
    try:
        one = run_study(plan, tmp_path / "one", jobs=1, progress=quiet)
    finally:
        torch.set_num_threads(threads)
    assert seen == [study.TORCH_THREADS] * 2
    two = run_study(plan, tmp_path / "two", jobs=2, progress=quiet)
    assert metrics(one) == metrics(two)
    assert [r["torch_threads"] for r in one + two] == [study.TORCH_THREADS] * 4
