"""Evaluation metrics on hand-checkable cases."""

import math

import numpy as np
import pytest

from emulator.metrics.evaluation import (
    DEFAULT_BINS,
    BayesianAverage,
    ece,
    error_rate,
    metrics,
    nll,
    plot_reliability,
    reliability,
    softmax,
)


def two_class(conf, correct):
    """Predictions of class 0 with confidence ``conf``; label 0 if correct else 1."""
    p = np.array([[c, 1 - c] for c in conf])
    return p, np.array([0 if ok else 1 for ok in correct])


def test_softmax_and_bma_of_two_samples():
    np.testing.assert_allclose(softmax([[0.0, math.log(3.0)]]), [[0.25, 0.75]], rtol=0, atol=1e-15)
    bma = BayesianAverage()
    bma.add_probs([[1.0, 0.0], [0.5, 0.5]])
    bma.add_logits(np.array([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]))
    assert bma.samples == 2
    np.testing.assert_allclose(bma.probs, [[0.625, 0.375], [0.625, 0.375]], rtol=0, atol=1e-15)
    m = bma.metrics(np.array([0, 1]))
    assert m["error"] == 0.5 and m["samples"] == 2.0
    assert m["nll"] == pytest.approx(-(math.log(0.625) + math.log(0.375)) / 2, abs=1e-15)


def test_nll_and_error_of_known_probabilities():
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.2, 0.4, 0.4]])
    y = np.array([0, 1, 2])
    assert nll(p, y) == pytest.approx((math.log(2) + math.log(4) + math.log(2.5)) / 3, abs=1e-15)
    assert error_rate(p, y) == pytest.approx(2 / 3)  # row 2 ties: argmax takes class 1
    assert nll([[1.0, 0.0]], [1]) == math.inf


def test_ece_of_perfectly_calibrated_predictions_is_zero():
    conf = [0.75] * 4 + [0.55] * 20 + [0.95] * 20
    correct = [1, 1, 1, 0] + [1] * 11 + [0] * 9 + [1] * 19 + [0]
    p, y = two_class(conf, correct)
    assert ece(p, y) == pytest.approx(0.0, abs=1e-12)
    r = reliability(p, y)
    assert r.count.sum() == 44 and r.count[np.ceil(0.75 * 15).astype(int) - 1] == 4


def test_ece_of_an_overconfident_model():
    p, y = two_class([0.9] * 10 + [0.6] * 10, [1] * 5 + [0] * 5 + [1] * 6 + [0] * 4)
    # bin of 0.9: acc 0.5 (gap 0.4); bin of 0.6: acc 0.6 (gap 0): ECE = 0.5 * 0.4
    assert ece(p, y) == pytest.approx(0.2, abs=1e-12)
    assert ece(p, y, bins=1) == pytest.approx(abs(0.55 - 0.75), abs=1e-12)


def test_bins_are_right_closed_and_empty_bins_are_nan():
    p, y = two_class([0.6, 2 / 3, 2 / 3 + 1e-9, 1.0], [1, 1, 0, 1])
    r = reliability(p, y, bins=3)
    assert r.count.tolist() == [0, 2, 2]  # 2/3 belongs to (1/3, 2/3]
    assert math.isnan(r.confidence[0]) and math.isnan(r.accuracy[0])
    np.testing.assert_allclose(r.edges, [0, 1 / 3, 2 / 3, 1])
    assert DEFAULT_BINS == 15 and len(reliability(p, y).count) == 15


def test_torch_inputs_and_plot(tmp_path):
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0]])
    y = torch.tensor([0, 1, 0])
    p = softmax(logits)
    m = metrics(p, y)
    assert m["error"] == pytest.approx(1 / 3)
    path = plot_reliability(reliability(p, y), str(tmp_path / "rel.png"), title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"logits must be finite; got nan at flat index 1"):
        softmax([[0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), got \(3,\)"):
        nll([[1.0, 0.0], [0.0, 1.0]], [0, 1, 1])
    with pytest.raises(ValueError, match=r"label 2 outside \[0, 2\)"):
        nll([[1.0, 0.0]], [2])
    with pytest.raises(ValueError, match=r"probs row 0 sums to 1.5, not 1"):
        ece([[1.0, 0.5]], [0])
    with pytest.raises(TypeError, match=r"labels must be integers, got dtype float64"):
        ece([[1.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match=r"bins must be an int >= 1, got 0"):
        reliability([[1.0, 0.0]], [0], bins=0)
    bma = BayesianAverage()
    with pytest.raises(ValueError, match=r"no samples added yet"):
        bma.probs  # noqa: B018
    bma.add_probs([[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"sample shape \(2, 2\) != earlier samples' \(1, 2\)"):
        bma.add_probs([[1.0, 0.0], [0.0, 1.0]])
