"""One Bayesian training run on the emulated datapath: data, model, optimizer, samples, BMA.

A :class:`RunSpec` fixes a run completely (data set, model, method, number format, step size,
seed, schedule, and the hardware knobs of the design-space studies). :func:`train_run` trains
it, collects posterior samples, and evaluates the Bayesian model average on the test set;
with ``ckpt`` it saves a checkpoint at the end of every epoch and resumes from it, so an
interrupted run continues bit-identically (model, optimizer words and random streams, data
order, BMA sums and the quantized layers' counters are all in the checkpoint).

Methods (the paper's names): ``sgld`` float32 SGLD, ``sgd`` float32 SGD (no noise),
``sgldlp-f`` (lp_f: low-precision weights, wide accumulator), ``naive`` (naive SGLDLP-L),
``vc`` (VC SGLDLP-L), ``sgdlp-f``, ``sgdlp-l``. Number formats: ``fixed`` (W-bit fixed point,
``Q(W, F)``, activations stay float as in the paper's fixed-point runs) and ``bfp`` (8-bit block
floating point, one exponent per row; activations and backward errors quantized to 8-bit BFP
per example with stochastic rounding, as in the paper's BFP runs). Float methods ignore it.

Schedule: constant step size ``lr`` on the mean mini-batch loss; noise variance
``v = 2 lr T / N`` (the paper's code); weight decay ``wd`` (Gaussian prior). Langevin methods
collect ``samples_per_epoch`` evenly spaced samples in every epoch after ``burnin`` epochs and
predict with their average; SGD methods predict with the last iterate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..metrics.evaluation import DEFAULT_BINS, BayesianAverage, metrics, reliability, softmax
from ..nn.qlayers import CHILD as QUANTIZER_CHILD
from ..nn.qlayers import QuantSpec, quantize_model
from ..optim import LowPrecisionSGLD, derive_seed
from ..spec.bfp import BfpConfig, BfpFormat
from ..spec.datapath import DatapathConfig, Variant
from ..spec.gaussian import GaussianSpec
from .data import Dataset
from .models import build_model
from .store import CorruptFile, load_checkpoint, save_checkpoint

METHODS: dict[str, str] = {
    "sgld": "fp", "sgd": "fp", "sgldlp-f": "lp_f", "naive": "naive", "vc": "vc", "sgdlp-f": "sgd_f",
    "sgdlp-l": "sgd_l",
}
LABELS = {"sgld": "SGLD (float32)", "sgd": "SGD (float32)", "sgldlp-f": "SGLDLP-F", "naive": "naive SGLDLP-L",
          "vc": "VC SGLDLP-L", "sgdlp-f": "SGDLP-F", "sgdlp-l": "SGDLP-L"}
FORMATS = ("fixed", "bfp")
GAUSSIANS: dict[str, GaussianSpec] = {
    "table4x8": GaussianSpec(),  # the default: 4 x 8-bit inversion table
    "table1x8": GaussianSpec(terms=1, index_bits=8),
    "table2x8": GaussianSpec(terms=2, index_bits=8),
    "clt4x8": GaussianSpec(kind="clt", terms=4, index_bits=8, frac=0),
    "clt1x8": GaussianSpec(kind="clt", terms=1, index_bits=8, frac=0),
}


def is_langevin(method: str) -> bool:
    return method == "sgld" or (METHODS[method] != "fp" and Variant(METHODS[method]).is_langevin)


@dataclass(frozen=True)
class RunSpec:
    """Everything that fixes one training run (JSON-serialisable)."""

    dataset: str = "fashion-mnist"
    model: str = "mlp"
    method: str = "vc"
    number_format: str = "fixed"
    lr: float = 0.5
    seed: int = 0
    epochs: int = 10
    burnin: int = 5
    samples_per_epoch: int = 2
    batch_size: int = 128
    temperature: float = 1.0
    weight_decay: float = 5e-4
    n_train: int | None = None
    n_test: int | None = None
    width: int = 8  # fixed point Q(width, frac)
    frac: int = 8
    sr_bits: int | None = None  # datapath SR random bits (None: exact)
    grad_sr_bits: int = 32
    gaussian: str = "table4x8"
    lanes: int = 1024
    pad_to: int | None = None  # zero-pad images to pad_to x pad_to (the ResNet stand-in: 32)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {tuple(METHODS)}")
        if self.number_format not in FORMATS:
            raise ValueError(f"unknown number format {self.number_format!r}; expected one of {FORMATS}")
        if self.gaussian not in GAUSSIANS:
            raise ValueError(f"unknown gaussian {self.gaussian!r}; expected one of {tuple(GAUSSIANS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name, lo in (("epochs", 1), ("burnin", 0), ("samples_per_epoch", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {self.device!r}") from None
        if self.pad_to is not None and (isinstance(self.pad_to, bool) or not isinstance(self.pad_to, int)
                                        or self.pad_to < 1):
            raise ValueError(f"pad_to must be None or an int >= 1, got {self.pad_to!r}")
        if self.burnin >= self.epochs:
            raise ValueError(f"burnin ({self.burnin}) must be smaller than epochs ({self.epochs})")
        for name in ("temperature", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):  # NaN fails v >= 0 too
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    @property
    def variant(self) -> str:
        return METHODS[self.method]

    @property
    def is_float(self) -> bool:
        return self.variant == "fp"

    @property
    def key(self) -> str:
        """A file-name-safe identity: readable prefix plus a hash of every field.

        ``pad_to`` and ``device`` enter the hash only when not at their defaults, so the keys of
        runs stored before they existed stay valid.
        """
        d = dataclasses.asdict(self)
        for name, default in (("pad_to", None), ("device", "cpu")):
            if d[name] == default:
                del d[name]
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        fmt = "float" if self.is_float else self.number_format
        return f"{self.model}-{self.method}-{fmt}-lr{self.lr:g}-s{self.seed}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fixed_training_config(spec: RunSpec, dataset_size: int) -> DatapathConfig:
    """``Q(width, frac)`` weights and gradients; 16-bit unsigned registers sized for ``spec.lr``.

    Each register gets the most fractional bits that still hold its value at this run's
    (constant) step size, as ``BfpConfig.paper`` does; ``lp_f``/``sgd_f`` keep a
    ``Q(width + 16, frac + 8)`` accumulator.
    """
    return DatapathConfig.paper(spec.variant, width=spec.width, frac=spec.frac, lanes=spec.lanes, max_lr=spec.lr,
                                weight_decay=spec.weight_decay, temperature=spec.temperature,
                                dataset_size=dataset_size, gaussian=GAUSSIANS[spec.gaussian], sr_bits=spec.sr_bits)


def training_config(spec: RunSpec, dataset_size: int) -> DatapathConfig | BfpConfig | str:
    """The optimizer ``config`` of ``spec``: ``"fp"``, a fixed :class:`DatapathConfig` or a :class:`BfpConfig`."""
    if spec.is_float:
        return "fp"
    if spec.number_format == "fixed":
        return fixed_training_config(spec, dataset_size)
    cfg = BfpConfig.paper(spec.variant, lanes=spec.lanes, max_lr=spec.lr, weight_decay=spec.weight_decay,
                          temperature=spec.temperature, dataset_size=dataset_size)
    if spec.gaussian != "table4x8":
        cfg = dataclasses.replace(cfg, gaussian=GAUSSIANS[spec.gaussian])
    if spec.sr_bits is not None:  # else the BFP default (24-bit SR uniform)
        cfg = dataclasses.replace(cfg, sr_bits=spec.sr_bits)
    return cfg


@dataclass
class RunResult:
    spec: dict[str, Any]
    metrics: dict[str, float | None]
    last: dict[str, float | None]
    reliability: dict[str, list[Any]]
    history: list[dict[str, float]] = field(default_factory=list)
    flushed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    diverged: str | None = None  # why the run stopped early (loss not finite); metrics are then None
    telemetry: list[dict[str, Any]] = field(default_factory=list)  # the optimizer's per-group counters

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    model.train()
    if not torch.isfinite(out).all():
        raise FloatingPointError("the model's test logits are not finite: the weights diverged")
    return softmax(out.double().cpu().numpy())


def _finite(m: dict[str, float]) -> dict[str, float | None]:
    """Metrics with an infinite NLL (a test label at probability 0) as None: JSON has no Infinity."""
    return {k: float(v) if math.isfinite(v) else None for k, v in m.items()}


def _json_floats(a: np.ndarray) -> list[float | None]:
    """NaN (an empty reliability bin) as None: JSON has no NaN."""
    return [None if math.isnan(x) else float(x) for x in a.tolist()]


def check_data(spec: RunSpec, data: Dataset) -> None:
    """``data`` must be the data set, subset, padding ``spec`` names (:func:`emulator.studies.study.prepare_data`)."""
    if data.name.split("[")[0].split("@")[0] != spec.dataset:
        raise ValueError(f"run {spec.key} is for data set {spec.dataset!r}, got {data.name!r}")
    for what, want, have in (("training", spec.n_train, len(data.y_train)), ("test", spec.n_test, len(data.y_test))):
        if want is not None and want != have:
            raise ValueError(f"run {spec.key} wants {want} {what} examples, the data set has {have}")
    if spec.pad_to is not None and data.input_shape[1:] != (spec.pad_to, spec.pad_to):
        raise ValueError(f"run {spec.key} wants {spec.pad_to}x{spec.pad_to} images, got {data.input_shape}")


def _deterministic(device: torch.device) -> None:
    """Repeatable CUDA kernels (cuDNN convolutions, cuBLAS); the datapath itself is exact anyway."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def train_run(spec: RunSpec, data: Dataset, *, ckpt: Path | None = None,
              progress: Callable[[str], None] | None = None) -> RunResult:
    """Train ``spec`` on ``data`` (as :func:`check_data` demands), resuming from ``ckpt`` when it exists.

    Raises :class:`FloatingPointError` when the training loss stops being finite.
    """
    t0 = time.perf_counter()
    check_data(spec, data)
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run {spec.key} asks for device {spec.device!r}, but CUDA is not available")
    _deterministic(device)
    n = len(data.y_train)
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    x_test = torch.from_numpy(data.x_test).to(device)
    model = build_model(spec.model, data.input_shape, data.num_classes, derive_seed(spec.seed, 100)).to(device)
    qmodel = None
    if spec.number_format == "bfp" and not spec.is_float:
        q = QuantSpec(BfpFormat(8, 8), "stochastic", headroom=1)
        qmodel = quantize_model(model, act=q, err=q, seed=derive_seed(spec.seed, 101),
                                eval_rounding="train")  # the recorded runs evaluated on the training streams
    temperature = 0.0 if spec.method in ("sgd",) else spec.temperature
    opt = LowPrecisionSGLD(model.parameters(), lr=spec.lr, config=training_config(spec, n), lanes=spec.lanes,
                           temperature=temperature, dataset_size=n, weight_decay=spec.weight_decay,
                           grad_sr_bits=spec.grad_sr_bits, seed=derive_seed(spec.seed, 102))
    order = torch.Generator().manual_seed(derive_seed(spec.seed, 103))
    bma = BayesianAverage()
    history: list[dict[str, float]] = []
    start = 0
    if ckpt is not None and ckpt.exists():
        # plain types and tensors, weights_only=True, run key and checksum checked (CorruptFile otherwise)
        st = load_checkpoint(ckpt, spec.key, map_location=device)
        if RunSpec(**st["spec"]).key != spec.key:
            raise CorruptFile(ckpt, f"written for a different run: {st['spec']}")
        # checkpoints written before the quantizers' buffers joined model.state_dict() lack them; the
        # counters come from st["qlayers"] below either way
        missing, unexpected = model.load_state_dict(st["model"], strict=False)
        if unexpected or any(f".{QUANTIZER_CHILD}." not in k for k in missing):
            raise ValueError(f"checkpoint {ckpt} does not match the model: missing {missing}, unexpected {unexpected}")
        opt.load_state_dict(st["opt"])
        order.set_state(st["order"])
        if st["bma_sum"] is not None:
            bma._sum, bma.samples = st["bma_sum"], st["bma_samples"]
        if qmodel is not None:
            qmodel.load_state_dict(st["qlayers"])
        history, start = st["history"], st["epoch"]
        if progress:
            progress(f"{spec.key}: resumed after epoch {start}")
    steps = math.ceil(n / spec.batch_size)
    if spec.samples_per_epoch > steps:
        raise ValueError(f"samples_per_epoch ({spec.samples_per_epoch}) exceeds the {steps} steps per epoch")
    collect_at = {round((j + 1) * steps / spec.samples_per_epoch) - 1 for j in range(spec.samples_per_epoch)}
    lossf = nn.CrossEntropyLoss()
    for epoch in range(start, spec.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        total, te = 0.0, time.perf_counter()
        for i in range(steps):
            idx = perm[i * spec.batch_size:(i + 1) * spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x_train[idx]), y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{spec.key}: loss {loss.item()} at epoch {epoch + 1} step {i + 1}")
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if epoch >= spec.burnin and is_langevin(spec.method) and i in collect_at:
                bma.add_probs(_predict(model, x_test))
        history.append({"epoch": epoch + 1, "train_loss": total / n, "seconds": time.perf_counter() - te})
        if ckpt is not None:
            save_checkpoint(ckpt, spec.key, {"spec": spec.to_dict(), "epoch": epoch + 1, "model": model.state_dict(),
                          "opt": opt.state_dict(), "order": order.get_state(), "history": history,
                          "bma_sum": bma._sum, "bma_samples": bma.samples,
                          "qlayers": qmodel.state_dict() if qmodel is not None else None})
        if progress:
            progress(f"{spec.key}: epoch {epoch + 1}/{spec.epochs} train loss {total / n:.4f} "
                     f"({time.perf_counter() - te:.1f} s)")
    last_probs = _predict(model, x_test)
    if not is_langevin(spec.method):
        bma.add_probs(last_probs)
    probs = bma.probs
    rel = reliability(probs, data.y_test, DEFAULT_BINS)
    return RunResult(spec.to_dict(), _finite(bma.metrics(data.y_test)), _finite(metrics(last_probs, data.y_test)),
                     {"count": rel.count.tolist(), "accuracy": _json_floats(rel.accuracy),
                      "confidence": _json_floats(rel.confidence)},
                     history, opt.flush_counts(), time.perf_counter() - t0,
                     telemetry=opt.telemetry())
