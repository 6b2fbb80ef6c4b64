"""Accuracy studies: a grid of training runs, resumable, with tables, JSON, Markdown and plots.

A :class:`StudyPlan` is a grid (models x number formats x methods x step sizes x seeds) of
:class:`~emulator.studies.training.RunSpec`; float methods run once per grid point whatever the format.
:func:`run_study` trains every run that has no result yet (finished runs are skipped, an
interrupted run continues from its last epoch checkpoint, so rerunning the same command resumes),
then :func:`summarize` aggregates over seeds (mean and sample std) and :func:`write_outputs`
writes ``results.json``, ``results.md``, ``error_vs_lr.png`` and ``reliability.png``.

``lpsgld train --preset NAME`` runs a preset (see :data:`PRESETS`), with overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.evaluation import DEFAULT_BINS, Reliability
from .data import DATASETS, Dataset, load_dataset
from .models import MODELS
from .store import (
    CHECKPOINT_MAGIC,
    MARKER,
    CorruptFile,
    atomic_write_bytes,
    atomic_write_json,
    check_fresh_target,
    json_safe,
    path_error,
    quarantine,
    read_result,
    run_lock,
    seal_result,
)
from .toy import stderr_progress
from .training import (
    FORMATS,
    LABELS,
    METHODS,
    RunResult,
    RunSpec,
    check_data,
    is_langevin,
    train_run,
    training_config,
)
from .workers import interruptible, pool_size, supervised_pool

METHOD_ORDER = tuple(METHODS)


@dataclass(frozen=True)
class StudyPlan:
    """A grid of runs sharing a data set and training settings."""

    name: str
    dataset: str = "digits"
    models: tuple[str, ...] = ("mlp",)
    formats: tuple[str, ...] = ("fixed",)
    methods: tuple[str, ...] = ("sgld", "sgldlp-f", "naive", "vc", "sgdlp-l")
    lrs: tuple[float, ...] = (0.5,)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30
    burnin: int = 15
    samples_per_epoch: int = 1
    batch_size: int = 128
    temperature: float = 1.0
    weight_decay: float = 5e-4
    n_train: int | None = None
    n_test: int | None = None
    pad_to: int | None = None
    lanes: int = 8192
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)  # further RunSpec fields (width, sr_bits, ...)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; expected one of {DATASETS}")
        for name, values, allowed in (("model", self.models, MODELS), ("format", self.formats, FORMATS),
                                      ("method", self.methods, METHOD_ORDER)):
            if not values:
                raise ValueError(f"a study needs at least one {name}")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad[0]!r}; expected one of {allowed}")
        if not self.lrs or not self.seeds:
            raise ValueError("a study needs at least one step size and one seed")
        self.runs()  # every RunSpec validated before anything trains

    def runs(self) -> list[RunSpec]:
        out: list[RunSpec] = []
        seen: set[str] = set()
        for model in self.models:
            for fmt in self.formats:
                for method in self.methods:
                    for lr in self.lrs:
                        for seed in self.seeds:
                            spec = RunSpec(
                                dataset=self.dataset, model=model, method=method,
                                number_format="fixed" if METHODS[method] == "fp" else fmt, lr=lr, seed=seed,
                                epochs=self.epochs, burnin=self.burnin, samples_per_epoch=self.samples_per_epoch,
                                batch_size=self.batch_size, temperature=self.temperature,
                                weight_decay=self.weight_decay, n_train=self.n_train, n_test=self.n_test,
                                lanes=self.lanes, pad_to=self.pad_to, device=self.device, **self.extra)
                            if spec.key not in seen:
                                seen.add(spec.key)
                                out.append(spec)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FM: dict[str, Any] = dict(dataset="fashion-mnist", epochs=6, burnin=3, samples_per_epoch=2)
PRESETS: dict[str, StudyPlan] = {
    # the README's quick look (about 2 minutes on 2 cores): logistic regression on digits, Q(8,4)
    "quick": StudyPlan("quick", models=("logreg",), lrs=(0.2, 0.05), epochs=10, burnin=5, batch_size=32,
                       lanes=64, extra={"frac": 4}),
    # the paper's claims on Fashion-MNIST: 8-bit fixed point Q(8,6) (range +-2 holds the float
    # posterior's weights) and 8-bit BFP, every method
    "fmnist-mlp": StudyPlan("fmnist-mlp", formats=("fixed", "bfp"), methods=METHOD_ORDER, extra={"frac": 6}, **_FM),
    # step-size sweep, fixed point: naive SGLDLP-L against VC as the step shrinks
    "fmnist-lr": StudyPlan("fmnist-lr", methods=("sgld", "sgldlp-f", "naive", "vc"), lrs=(0.5, 0.1, 0.02),
                           extra={"frac": 6}, **_FM),
    "fmnist-logreg": StudyPlan("fmnist-logreg", models=("logreg",), extra={"frac": 5},
                               methods=("sgld", "sgldlp-f", "naive", "vc", "sgdlp-l"), **_FM),
    # lr 0.1: at 0.5 this BatchNorm-free CNN collapses to chance on some seeds (docs/studies.md)
    "fmnist-cnn": StudyPlan("fmnist-cnn", models=("cnn",), extra={"frac": 6},
                            methods=("sgld", "naive", "vc", "sgdlp-l"), lrs=(0.1,),
                            **dict(_FM, epochs=4, burnin=2)),
    # calibration after overfitting: 10,000 training examples, 30 epochs; SGD's last iterate grows
    # overconfident, the Langevin methods' BMA should not (the paper's ECE claim)
    "fmnist-calibration": StudyPlan("fmnist-calibration", dataset="fashion-mnist", n_train=10000,
                                    formats=("fixed", "bfp"), methods=("sgld", "sgd", "naive", "vc", "sgdlp-l"),
                                    epochs=30, burnin=10, samples_per_epoch=1, extra={"frac": 6}),
    # the MLP study at the float emulation's length (REFERENCE: 30 epochs, burn-in 10): Q(8,6), lr 0.5,
    # T = 1, N = 60,000: v = 2 lr T / N = 1.67e-5 < LSB^2/4 = 6.1e-5, so VC takes branch B on every step
    "fmnist-mlp30": StudyPlan("fmnist-mlp30", methods=("sgld", "sgldlp-f", "naive", "vc"), epochs=30, burnin=10,
                              samples_per_epoch=2, dataset="fashion-mnist", extra={"frac": 6}),
    # both VC branches on real data: 10,000 training examples make v = 2 lr T / N = 1e-4 > LSB^2/4, so VC takes
    # branch A on every step (the posterior of a smaller data set; nothing else changes from fmnist-mlp30)
    "fmnist-branch-a": StudyPlan("fmnist-branch-a", methods=("sgld", "sgldlp-f", "naive", "vc"), n_train=10000,
                                 epochs=30, burnin=10, samples_per_epoch=2, dataset="fashion-mnist",
                                 extra={"frac": 6}),
    # the GPU stand-in for the paper's CIFAR-10 ResNet-18 run (scripts/resnet_standin.sh), 8-bit BFP
    "resnet18-standin": StudyPlan("resnet18-standin", dataset="fashion-mnist", models=("resnet18",),
                                  formats=("bfp",), methods=("sgld", "sgldlp-f", "vc"), seeds=(0,), epochs=6,
                                  burnin=3, samples_per_epoch=2, pad_to=32, device="cuda", lanes=1 << 16),
}


def prepare_data(plan: StudyPlan) -> Dataset:
    data = load_dataset(plan.dataset)
    if plan.n_train is not None or plan.n_test is not None:
        data = data.subset(plan.n_train, plan.n_test)
    if plan.pad_to is not None:
        data = data.pad_to(plan.pad_to)
    return data


_WORKER_DATA: dict[str, Dataset] = {}
TORCH_THREADS = 1  # every run, in-process or in a worker: float results do not depend on --jobs
OUTPUT_NAMES = ("plan.json", "results.json", "results.md", "error_vs_lr.png", "reliability.png")


def _worker(args: tuple[StudyPlan, RunSpec, str, bool, bool]) -> dict[str, Any] | None:
    plan, spec, runs, wait, strict = args
    if plan.name not in _WORKER_DATA:
        _WORKER_DATA[plan.name] = prepare_data(plan)
    return _run_one(spec, Path(runs), _WORKER_DATA[plan.name], wait=wait, strict=strict)


def result_path(runs: Path, key: str) -> Path:
    return runs / f"{key}.json"


def checkpoint_path(runs: Path, key: str) -> Path:
    return runs / "checkpoints" / f"{key}.ckpt"


def check_result(path: Path, key: str, runs: Path, *, strict: bool,
                 progress: Callable[[str], None] = stderr_progress) -> dict[str, Any] | None:
    """The intact result of run ``key`` at ``path``, or None (absent; or corrupt and quarantined).

    ``strict``: a corrupt or foreign file is an error (:class:`~emulator.studies.store.CorruptFile`).
    """
    if not path.exists():
        return None
    try:
        return read_result(path, key)
    except CorruptFile as e:
        legacy = _legacy_result(path, key)
        if legacy is not None:  # written before results carried a checksum: its spec names this run
            sealed = seal_result(legacy, key)
            atomic_write_json(path, sealed)
            progress(f"{path}: written before results carried a checksum; its spec is this run's, sealed as is")
            return sealed
        if strict:
            raise
        dest = quarantine(path, runs)
        progress(f"warning: {e}; moved to {dest}, the run is recomputed")
        return None


def _legacy_result(path: Path, key: str) -> dict[str, Any] | None:
    """A result written before the integrity record existed, if its own spec hashes to ``key``."""
    try:
        res = json.loads(path.read_text())
        if not isinstance(res, dict) or "integrity" in res or not isinstance(res.get("metrics"), dict):
            return None
        return res if RunSpec(**res["spec"]).key == key else None
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None


def _run_one(spec: RunSpec, runs: Path, data: Dataset, *, wait: bool = True, strict: bool = False,
             progress: Callable[[str], None] = stderr_progress) -> dict[str, Any] | None:
    """Train ``spec`` under its lock and store the result; None when another process holds the lock
    (``wait=False``). A result another process finished meanwhile is returned, not recomputed."""
    import torch

    with run_lock(runs, spec.key, wait=wait) as mine:
        if not mine:
            return None
        path = result_path(runs, spec.key)
        done = check_result(path, spec.key, runs, strict=strict, progress=progress)
        if done is not None:
            return done
        ckpt = checkpoint_path(runs, spec.key)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(TORCH_THREADS)
        t0 = time.perf_counter()
        try:
            try:
                res = train_run(spec, data, ckpt=ckpt, progress=progress).to_dict()
            except CorruptFile as e:
                if strict:
                    raise
                dest = quarantine(e.path, runs)
                progress(f"warning: {e}; moved to {dest}, the run starts over")
                res = train_run(spec, data, ckpt=ckpt, progress=progress).to_dict()
        except FloatingPointError as e:  # a diverged run is a result (recorded, shown), not a crash of the study
            res = RunResult(spec.to_dict(), {k: None for k in ("error", "nll", "ece", "samples")},
                            {k: None for k in ("error", "nll", "ece")}, {}, [], [], time.perf_counter() - t0,
                            diverged=str(e)).to_dict()
        finally:
            torch.set_num_threads(threads)
        res["torch_threads"] = TORCH_THREADS
        res = seal_result(res, spec.key)
        atomic_write_json(path, res)
        ckpt.unlink(missing_ok=True)
        return res


def _study_output_paths(root: Path, rdir: Path) -> list[Path]:
    """What the runner writes under ``root`` (``--fresh`` deletes these and nothing else)."""
    paths = [root / n for n in OUTPUT_NAMES]
    if rdir.resolve().parent == root.resolve():  # the default runs directory: the runner's own files in it
        paths += [p for p in rdir.glob("*.json")
                  if p.is_file() and (_is_result(p) or _legacy_result(p, p.stem) is not None)]
        paths += [p for p in (rdir / "checkpoints").glob("*.ckpt") if p.is_file() and _is_checkpoint(p)]
        paths += [p for p in (rdir / "checkpoints").glob("*.pt") if p.is_file() and _is_legacy_checkpoint(p)]
        paths += [p for p in (rdir / "locks").glob("*.lock") if p.is_file() and p.stat().st_size == 0]
        paths += [*rdir.glob(".*.json.*.tmp"), *(rdir / "checkpoints").glob(".*.ckpt.*.tmp")]
    return paths  # the quarantine stays: it holds files the runner refused, for their owner to inspect


def _is_result(path: Path) -> bool:
    try:
        read_result(path, path.stem)
        return True
    except (CorruptFile, OSError):
        return False


def _is_checkpoint(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(CHECKPOINT_MAGIC)) == CHECKPOINT_MAGIC
    except OSError:
        return False


_RUN_KEY = re.compile(r"[\w.+-]+-s\d+-[0-9a-f]{10}")


def _is_legacy_checkpoint(path: Path) -> bool:
    """A checkpoint of the runner before checksummed checkpoints: ``<run key>.pt``, a torch.save zip."""
    try:
        with path.open("rb") as f:
            return _RUN_KEY.fullmatch(path.stem) is not None and f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _remove_fresh(root: Path, rdir: Path) -> None:
    check_fresh_target(root)
    if not root.exists():
        return
    for p in _study_output_paths(root, rdir):
        p.unlink(missing_ok=True)
    if rdir.resolve().parent == root.resolve():
        for sub in ("checkpoints", "locks", ""):
            with contextlib.suppress(OSError):
                (rdir / sub).rmdir()  # only when empty: files the runner did not write stay
    (root / MARKER).unlink(missing_ok=True)


def prepare_out(root: Path, rdir: Path) -> None:
    """Create (or check) the study and runs directories before any work: a path that cannot be
    written fails here, naming it, not after hours of training."""
    for d in (root, rdir, rdir / "checkpoints", rdir / "locks"):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise path_error(e, d, "create the directory") from e
        if not os.access(d, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, f"cannot write into {d}: permission denied")
    marker = root / MARKER
    if not marker.exists():
        atomic_write_bytes(marker, b"written by lpsgld train; --fresh deletes only what the runner wrote\n")


def run_study(plan: StudyPlan, out: str | os.PathLike[str], *, jobs: int = 1, fresh: bool = False,
              runs: str | os.PathLike[str] | None = None, strict: bool = False,
              progress: Callable[[str], None] = stderr_progress) -> list[dict[str, Any]]:
    """Train every run of ``plan`` that has no result yet; returns all results in plan order.

    Finished runs are JSON files named by :attr:`RunSpec.key` (a hash of every setting) in
    ``runs`` (default ``out/runs``), checkpoints in ``runs/checkpoints``: studies that name the
    same ``runs`` directory share the runs they have in common (each run is trained under a lock,
    once). A corrupt or foreign result or checkpoint is quarantined and recomputed; ``strict``
    makes it an error. Guarantees: docs/studies.md.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    root = Path(out)
    plan_file = root / "plan.json"
    rdir = Path(runs) if runs is not None else root / "runs"
    if fresh:
        _remove_fresh(root, rdir)
    if plan_file.exists():
        try:
            old = json.loads(plan_file.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            old = None
            progress(f"warning: {plan_file} is unreadable ({e}); it is rewritten")
        if old is not None and old != json.loads(json.dumps(plan.to_dict())):
            # runs are stored by a hash of their settings, so a changed plan reuses exactly the runs it shares
            progress(f"{root} held another plan; it is replaced, and finished runs it shares are reused")
    prepare_out(root, rdir)
    atomic_write_json(plan_file, plan.to_dict())
    specs = plan.runs()
    data = prepare_data(plan)
    for spec in specs:  # every run's data and datapath configuration checked before any training
        check_data(spec, data)
        try:
            training_config(spec, len(data.y_train))
        except ValueError as e:
            raise ValueError(f"run {spec.key}: {e}") from None
    done = {s.key for s in specs
            if check_result(result_path(rdir, s.key), s.key, rdir, strict=strict, progress=progress) is not None}
    todo = [s for s in specs if s.key not in done]
    partial = [s for s in todo if checkpoint_path(rdir, s.key).exists()]
    progress(f"study {plan.name}: {len(specs)} runs, {len(done)} done, {len(partial)} to resume from checkpoints, "
             f"{len(todo) - len(partial)} to start; results in {root}")
    t0 = time.perf_counter()
    count = 0

    def report(res: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        m = res["metrics"]
        el = time.perf_counter() - t0
        eta = el / count * (len(todo) - count)
        nll = "inf" if m["nll"] is None else f"{m['nll']:.4f}"  # None: a test label at probability 0
        what = f"DIVERGED: {res['diverged']}" if res.get("diverged") else \
            f"error {100 * m['error']:.2f}% NLL {nll} ECE {100 * m['ece']:.2f}%"
        progress(f"[{count}/{len(todo)}] {RunSpec(**res['spec']).key}: {what} ({res['seconds']:.0f} s; "
                 f"elapsed {el:.0f} s, about {eta:.0f} s left)")

    # first pass: runs no other process is training; second pass: wait for the ones another process held
    busy: list[RunSpec] = []
    workers = pool_size(jobs, len(todo))
    if todo and workers == 1:
        with interruptible():  # SIGTERM as SIGINT: the run's lock and last checkpoint stay consistent
            for wait, queue in ((False, todo), (True, busy)):
                for spec in list(queue):
                    if wait:
                        progress(f"{spec.key}: another process is training it; waiting for its lock")
                    res = _run_one(spec, rdir, data, wait=wait, strict=strict, progress=progress)
                    if res is None:
                        busy.append(spec)
                    else:
                        report(res)
    elif todo:
        del data  # the workers load their own copy
        with supervised_pool(workers, get_context("spawn")) as ex:
            futs = {ex.submit(_worker, (plan, s, str(rdir), False, strict)): s for s in todo}
            for f in as_completed(futs):
                res = f.result()
                if res is None:
                    busy.append(futs[f])
                else:
                    report(res)
            if busy:
                progress(f"{len(busy)} runs are being trained by another process; waiting for their locks")
            futs = {ex.submit(_worker, (plan, s, str(rdir), True, strict)): s for s in busy}
            for f in as_completed(futs):
                res = f.result()
                if res is None:  # unreachable: a waiting worker always gets the lock
                    raise RuntimeError(f"run {futs[f].key}: lock not acquired")
                report(res)
    return [read_result(result_path(rdir, s.key), s.key) for s in specs]


# ---- aggregation and outputs ---------------------------------------------------------------


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    if not np.isfinite(a).all():  # an infinite NLL: the mean is inf, the spread undefined
        return math.inf, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, format, method, lr): mean and std over seeds of error, NLL, ECE."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        s = r["spec"]
        groups.setdefault((s["model"], format_name(s), s["method"], s["lr"]), []).append(r)
    rows = []
    for (model, fmt, method, lr), rs in groups.items():
        ok = [r for r in rs if not r.get("diverged")]
        row: dict[str, Any] = {"model": model, "format": fmt, "method": method, "label": LABELS[method], "lr": lr,
                               "seeds": len(ok), "diverged": len(rs) - len(ok),
                               "prediction": "BMA" if is_langevin(method) else "last iterate"}
        for k in ("error", "nll", "ece"):
            # an NLL of inf (a label at probability 0) is stored as null
            vals = [math.inf if r["metrics"][k] is None else r["metrics"][k] for r in ok]
            row[k], row[f"{k}_std"] = _mean_std(vals) if vals else (math.nan, math.nan)
        row["flushed_steps"] = sum(g["flushed_steps"] for r in ok for g in r["flushed"])
        row["seconds"] = sum(r["seconds"] for r in rs)
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["format"] != "float32", r["format"].split()[0] == "bfp", r["format"],
                             METHOD_ORDER.index(r["method"]), -r["lr"]))
    return rows


def format_name(spec: dict[str, Any]) -> str:
    """``float32``, ``fixed Q(W,F)`` or ``bfp 8-bit`` for a run's spec dict."""
    if METHODS[spec["method"]] == "fp":
        return "float32"
    if spec["number_format"] == "fixed":
        return f"fixed Q({spec['width']},{spec['frac']})"
    return "bfp 8-bit"


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["model", "format", "method", "lr", "seeds", "test error %", "NLL", "ECE %"]
    lines = []
    for r in rows:
        seeds = str(r["seeds"]) + (f" ({r['diverged']} diverged)" if r.get("diverged") else "")
        lines.append([r["model"], r["format"], r["label"], f"{r['lr']:g}", seeds,
                      f"{100 * r['error']:.2f} ± {100 * r['error_std']:.2f}",
                      f"{r['nll']:.4f} ± {r['nll_std']:.4f}",
                      f"{100 * r['ece']:.2f} ± {100 * r['ece_std']:.2f}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x) + " |" for x in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])


def pooled_reliability(results: list[dict[str, Any]]) -> Reliability:
    """Reliability pooled over runs (bin counts added, accuracy/confidence count-weighted)."""
    count = np.zeros(DEFAULT_BINS)
    acc = np.zeros(DEFAULT_BINS)
    conf = np.zeros(DEFAULT_BINS)
    def arr(xs: list[float | None]) -> np.ndarray:  # empty bins are stored as null
        return np.array([0.0 if x is None or math.isnan(x) else x for x in xs], dtype=np.float64)

    for r in results:
        c = arr(r["reliability"]["count"])
        count += c
        acc += c * arr(r["reliability"]["accuracy"])
        conf += c * arr(r["reliability"]["confidence"])
    a = np.where(count > 0, acc / np.maximum(count, 1), np.nan)
    f = np.where(count > 0, conf / np.maximum(count, 1), np.nan)
    return Reliability(np.linspace(0, 1, DEFAULT_BINS + 1), f, a, count.astype(np.int64))


def plot_error_vs_lr(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["format"]) for r in rows if r["format"] != "float32"}) or \
        sorted({(r["model"], r["format"]) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.8 * len(panels), 7), squeeze=False, dpi=90)
    try:
        for j, (model, fmt) in enumerate(panels):
            sel = [r for r in rows if r["model"] == model and r["format"] in (fmt, "float32")]
            present = [m for m in METHOD_ORDER if any(r["method"] == m for r in sel)]
            for mi, method in enumerate(present):
                rs = sorted([r for r in sel if r["method"] == method], key=lambda r: r["lr"])
                dodge = 1.04 ** (mi - (len(present) - 1) / 2)  # spread the methods' error bars apart
                lr = [r["lr"] * dodge for r in rs]
                for i, k in enumerate(("error", "nll")):
                    scale = 100 if k == "error" else 1
                    axes[i][j].errorbar(lr, [scale * r[k] for r in rs], [scale * r[f"{k}_std"] for r in rs],
                                        marker="o", capsize=3, label=LABELS[method])
            ticks = sorted({r["lr"] for r in sel})
            for i, k in enumerate(("test error %", "test NLL")):
                ax = axes[i][j]
                ax.set_xscale("log")
                ax.minorticks_off()  # log-axis minor labels crowd the few step sizes a study has
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.set_xlabel("step size")
                ax.set_ylabel(k)
                ax.set_title(f"{model}, {fmt} (mean ± std over seeds)", fontsize=9)
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_reliability_grid(results: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    """One reliability diagram per (model, format, method) at the study's largest step size, seeds pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr = max(r["lr"] for r in rows)
    cells = [(r["model"], r["format"], r["method"]) for r in rows if r["lr"] == lr]
    ncol = min(4, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), squeeze=False, dpi=90)
    try:
        for ax in axes.flat[len(cells):]:
            ax.axis("off")
        for ax, (model, fmt, method) in zip(axes.flat, cells, strict=False):
            rs = [r for r in results if r["spec"]["model"] == model and r["spec"]["method"] == method
                  and r["spec"]["lr"] == lr and format_name(r["spec"]) == fmt and not r.get("diverged")]
            rel = pooled_reliability(rs)
            used = rel.count > 0
            w = 1 / DEFAULT_BINS
            centers = rel.edges[:-1] + w / 2
            ax.bar(centers[used], rel.accuracy[used], width=w, edgecolor="black", color="tab:blue", alpha=0.8,
                   label="accuracy")
            ax.plot(centers[used], rel.confidence[used], "o", color="tab:red", ms=3, label="mean confidence")
            ax.plot([0, 1], [0, 1], "k--", lw=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{model} {fmt}\n{LABELS[method]}: ECE {100 * rel.ece:.2f}%", fontsize=8)
            ax.tick_params(labelsize=7)
        axes.flat[0].legend(loc="upper left", fontsize=7)
        fig.suptitle(f"Reliability: accuracy per confidence bin ({DEFAULT_BINS} bins, seeds pooled), lr {lr:g}; "
                     f"bars above the diagonal: underconfident", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_outputs(plan: StudyPlan, results: list[dict[str, Any]], out: str | os.PathLike[str],
                  command: str = "") -> dict[str, str]:
    """``results.json``, ``results.md``, ``error_vs_lr.png``, ``reliability.png`` in ``out``; returns the paths."""
    root = Path(out)
    rows = summarize(results)
    paths = {k: str(root / v) for k, v in (("json", "results.json"), ("markdown", "results.md"),
                                           ("error_vs_lr", "error_vs_lr.png"), ("reliability", "reliability.png"))}
    atomic_write_json(Path(paths["json"]), json_safe({"plan": plan.to_dict(), "command": command,
                                                      "summary": rows, "runs": results}))
    md = [f"# Study `{plan.name}`", "", f"Command: `{command}`" if command else "", "",
          f"Data set {plan.dataset}, {plan.epochs} epochs (burn-in {plan.burnin}, {plan.samples_per_epoch} "
          f"samples per epoch after it), batch {plan.batch_size}, temperature {plan.temperature:g}, weight decay "
          f"{plan.weight_decay:g}; Langevin methods predict with the BMA of their samples, SGD methods with the "
          f"last iterate. Mean ± sample std over seeds {list(plan.seeds)}.", "", format_table(rows, markdown=True),
          "", "![error and NLL vs step size](error_vs_lr.png)", "", "![reliability diagrams](reliability.png)", ""]
    Path(paths["markdown"]).write_text("\n".join(md))
    ok = [r for r in results if not r.get("diverged")]
    try:
        plot_error_vs_lr([r for r in rows if r["seeds"]], Path(paths["error_vs_lr"]))
        if ok:
            plot_reliability_grid(ok, [r for r in rows if r["seeds"]], Path(paths["reliability"]))
    except ImportError as e:  # e.g. a GPU image without matplotlib: the tables and JSON are written
        stderr_progress(f"plots skipped: {e}")
        del paths["error_vs_lr"], paths["reliability"]
    return paths

