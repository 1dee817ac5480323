from clq.analysis import load_results, notebook_text, plot_accuracy, run_notebook


def _fake_results(tmp_path):
    import json
    r = {"accuracy_per_event": [0.2, 0.4, 0.5], "joint_accuracy": 0.6, "final_accuracy": 0.5,
         "forgetting": {"per_class": 0.1}, "latent": {"layer": 19, "lr_bits": 8}, "buffer": {"size": 1500},
         "final_accuracy_per_session": {"clean": 0.6, "dim": 0.4},
         "memory_bytes": {k: 1 for k in ("lr_buffer", "frozen_weights", "adaptive_weights", "gradients",
                                         "optimizer_state", "activations", "total")}}
    (tmp_path / "results.json").write_text(json.dumps(r))
    return r


def test_plot_accuracy(tmp_path):
    _fake_results(tmp_path)
    fig = plot_accuracy(load_results(str(tmp_path)))
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [20.0, 40.0, 50.0]
    assert len(fig.axes) == 2


def test_run_report_notebook_executes(tmp_path):
    _fake_results(tmp_path)
    nb = run_notebook("run_report.ipynb", {"CLQ_RESULTS": str(tmp_path)}, timeout=120)
    assert "final accuracy 50.00 %" in notebook_text(nb)
