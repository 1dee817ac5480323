"""Analysis of clq runs and sweeps: collect members into a DataFrame, aggregate seeds, Pareto fronts, plots,
the HTML trade-off report, and the comparison with the paper's accuracy table.

    df = collect_runs("multirun/offline_grid/latest")      # one row per member (failures included)
    agg = aggregate_seeds(df)                               # one row per configuration, mean/std over seeds
    agg[pareto_front(agg, "memory_lr_buffer")]              # accuracy vs replay memory front
    plot_tradeoff(agg, "memory_lr_buffer")                  # with the target's memory limits drawn

`python -m clq.analysis SWEEP_DIR` writes the HTML report; `notebooks/tradeoffs.ipynb` shows the same.
"""

from clq.analysis.collect import (FAILURE_FILE, METRIC_COLUMNS, PARAM_COLUMNS, REPLICATE_COLUMNS, collect_runs,
                                  collect_wandb,
                                  find_members, member_row, paper_names, params_from_config, precision_label,
                                  read_wandb_offline, wandb_table, write_csv)
from clq.analysis.notebook import notebook_text, run_notebook
from clq.analysis.paper import PAPER_ACCURACY, compare_with_paper, paper_accuracy, precision_drops
from clq.analysis.plots import plot_accuracy_per_event, plot_memory_breakdown, plot_tradeoff, target_memory_limits
from clq.analysis.report import front_table, render_report, summary_table
from clq.analysis.results import find_results, load_results, plot_accuracy
from clq.analysis.tradeoffs import aggregate_seeds, config_label, metric_column, pareto_front

__all__ = [
    "FAILURE_FILE",
    "METRIC_COLUMNS",
    "PAPER_ACCURACY",
    "PARAM_COLUMNS",
    "REPLICATE_COLUMNS",
    "aggregate_seeds",
    "collect_runs",
    "collect_wandb",
    "compare_with_paper",
    "config_label",
    "find_members",
    "find_results",
    "front_table",
    "load_results",
    "member_row",
    "metric_column",
    "notebook_text",
    "paper_accuracy",
    "paper_names",
    "params_from_config",
    "pareto_front",
    "plot_accuracy",
    "plot_accuracy_per_event",
    "plot_memory_breakdown",
    "plot_tradeoff",
    "precision_drops",
    "precision_label",
    "read_wandb_offline",
    "render_report",
    "run_notebook",
    "summary_table",
    "target_memory_limits",
    "wandb_table",
    "write_csv",
]
