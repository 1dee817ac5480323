"""Analysis of run results: load results.json files, plot accuracy curves (sweep collection comes later)."""

from clq.analysis.results import find_results, load_results, plot_accuracy

__all__ = ["find_results", "load_results", "plot_accuracy"]
