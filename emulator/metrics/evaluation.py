"""Evaluating posterior samples: Bayesian model averaging, test error, NLL, ECE and reliability diagrams.

The Bayesian model average of ``S`` samples is the mean of their softmax
probabilities, ``p(y | x) = (1/S) sum_s softmax(f_s(x))`` (:class:`BayesianAverage`
accumulates it, so samples can be added during training). Metrics, on ``N``
examples with predicted class ``argmax p`` (first index on ties) and confidence
``max p``:

* test error: fraction of examples whose predicted class is not the label;
* NLL: ``-(1/N) sum log p(label)`` (``inf`` if some label has probability 0);
* ECE with ``B`` equal-width confidence bins ``((b-1)/B, b/B]`` (default ``B = 15``,
  the convention of Guo et al. 2017 and of the paper's reference code; a confidence
  is never 0, so the first bin is ``(0, 1/B]``): ``sum_b (n_b / N) |acc_b - conf_b|``.

All arithmetic is float64 numpy; inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BINS = 15


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted); NaN or +-Inf logits raise ValueError naming the index."""
    z = _array(logits, "logits").astype(np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must have shape (examples, classes), got {z.shape}")
    bad = ~np.isfinite(z)
    if bad.any():
        idx = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"logits must be finite; got {z.ravel()[idx]} at flat index {idx}")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _array(probs, "probs").astype(np.float64)
    y = _array(labels, "labels")
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must have shape (examples, classes), got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ValueError(f"label {bad} outside [0, {p.shape[1]})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > 1e-6:
        raise ValueError(f"probs row {worst} sums to {float(sums[worst])!r}, not 1")
    return p, y.astype(np.int64)


def error_rate(probs: Any, labels: Any) -> float:
    """Fraction of examples whose argmax class (first on ties) differs from the label."""
    p, y = _check(probs, labels)
    return float(np.mean(p.argmax(axis=1) != y))


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log probability of the labels (``inf`` if one of them has probability 0)."""
    p, y = _check(probs, labels)
    py = p[np.arange(len(y)), y]
    if (py == 0).any():
        return math.inf
    return float(-np.mean(np.log(py)))


@dataclass(frozen=True)
class Reliability:
    """Per-bin data of a reliability diagram: bin edges (B+1), mean confidence, accuracy and count per bin.

    Empty bins have NaN confidence and accuracy and count 0.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        used = self.count > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.count[used] / n * gaps))


def reliability(probs: Any, labels: Any, bins: int = DEFAULT_BINS) -> Reliability:
    """Bin the examples by confidence into ``bins`` equal-width right-closed bins of (0, 1]."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    p, y = _check(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)  # (b/B, (b+1)/B] -> b
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.bincount(idx, weights=conf, minlength=bins) / count
        a = np.bincount(idx, weights=correct, minlength=bins) / count
    return Reliability(np.linspace(0.0, 1.0, bins + 1), c, a, count)


def ece(probs: Any, labels: Any, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins (default 15)."""
    return reliability(probs, labels, bins).ece


def metrics(probs: Any, labels: Any, bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Test error, NLL and ECE of predictive probabilities."""
    return {"error": error_rate(probs, labels), "nll": nll(probs, labels), "ece": ece(probs, labels, bins)}


class BayesianAverage:
    """Running Bayesian model average of predictive probabilities on a fixed evaluation set.

    >>> bma = BayesianAverage()             # doctest: +SKIP
    >>> bma.add_logits(model(x_test))       # once per collected sample
    >>> bma.metrics(y_test)
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self.samples = 0

    def add_probs(self, probs: Any) -> None:
        """Add one sample's predictive probabilities, shape (examples, classes)."""
        p = _array(probs, "probs").astype(np.float64)
        if p.ndim != 2:
            raise ValueError(f"probs must have shape (examples, classes), got {p.shape}")
        if not np.isfinite(p).all() or (p < 0).any():
            raise ValueError("probs must be finite and non-negative")
        if self._sum is None:
            self._sum = np.zeros_like(p)
        elif p.shape != self._sum.shape:
            raise ValueError(f"sample shape {p.shape} != earlier samples' {self._sum.shape}")
        self._sum += p
        self.samples += 1

    def add_logits(self, logits: Any) -> None:
        """Add one sample given its logits (softmax taken in float64)."""
        self.add_probs(softmax(logits))

    @property
    def probs(self) -> np.ndarray:
        """The average ``(1/S) sum_s p_s``."""
        if self._sum is None:
            raise ValueError("no samples added yet")
        return self._sum / self.samples

    def state_dict(self) -> dict[str, Any]:
        """``{'sum': summed probabilities (float64 array or None), 'samples': count}``, for checkpoints."""
        return {"sum": None if self._sum is None else self._sum.copy(), "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``sum`` may be any array-like, e.g. a float64 torch tensor)."""
        s = state["sum"]
        self._sum = None if s is None else np.array(s, dtype=np.float64)
        self.samples = int(state["samples"])

    def metrics(self, labels: Any, bins: int = DEFAULT_BINS) -> dict[str, float]:
        out = metrics(self.probs, labels, bins)
        out["samples"] = float(self.samples)
        return out


def plot_reliability(data: Reliability, path: str, title: str = "Reliability diagram") -> str:
    """Write a reliability diagram (accuracy per confidence bin against the diagonal) as a PNG; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = len(data.count)
    width = 1.0 / b
    centers = data.edges[:-1] + width / 2
    used = data.count > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    try:
        ax.bar(centers[used], data.accuracy[used], width=width, edgecolor="black", color="tab:blue", label="accuracy")
        gap = data.confidence[used] - data.accuracy[used]
        ax.bar(centers[used], gap, bottom=data.accuracy[used], width=width, color="tab:red", alpha=0.3,
               label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE = {100 * data.ece:.2f}%  ({b} bins, N = {int(data.count.sum())})")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
