"""Prediction metrics for sampled networks: Bayesian model averaging, test error, NLL, ECE, reliability."""

from .evaluation import BayesianAverage, Reliability, ece, error_rate, metrics, nll, plot_reliability, reliability

__all__ = ["BayesianAverage", "Reliability", "ece", "error_rate", "metrics", "nll", "plot_reliability", "reliability"]
