"""The sweep table's three-way comparison: one-shot, gradual and VCON side by side, VCON's gain over each baseline
paired by seed, from run identities composed by the real config tree."""
import pytest
from conftest import make_config

from vcon.app import identity, report, sweep
from vcon.method import Gradual, Vcon

ACCURACY = {  # (method, Q epochs) -> test accuracy per seed
    ("vcon", 0): {0: 80.0, 1: 81.0, 2: 79.0},
    ("gradual", 3): {0: 83.0, 1: 82.0, 2: 84.5},
    ("vcon", 3): {0: 85.0, 1: 85.5, 2: 85.0},
}


def runs(compression: str = "prune", accuracy: dict = ACCURACY) -> list[dict]:
    out = []
    for (method, q), accuracies in accuracy.items():
        for seed, acc in accuracies.items():
            cfg = make_config(f"compression={compression}", f"method={method}", f"vcon.epochs={q}", f"seed={seed}")
            results = {"test_acc": acc, "compression": {"zero_fraction": 0.9, "bits_per_weight": 4.2,
                                                        "params_before": 100, "params_after": 10}}
            out.append({"dir": identity.run_id(cfg), "identity": identity.identity(cfg), "status": "done",
                        "results": results})
    return out


def test_vcon_is_paired_by_seed_with_one_shot_and_with_gradual():
    rows = sweep.summarize(runs())
    assert [r["transition"] for r in rows] == ["one-shot", "gradual Q=3 ep cubic", "VCON Q=3 ep linear"]
    vcon = rows[2]
    assert vcon["gain_mean"] == pytest.approx((5 + 4.5 + 6) / 3)
    assert vcon["gain_gradual_mean"] == pytest.approx((2 + 3.5 + 0.5) / 3)
    assert vcon["_gains"] == {"one-shot": [5.0, 4.5, 6.0], "gradual": [2.0, 3.5, 0.5]}
    assert "gain_mean" not in rows[0] and "gain_mean" not in rows[1]  # the baselines have no gain of their own
    table = sweep.markdown(rows, runs())
    assert "| VCON's gain over one-shot (points) | over gradual (points) |" in table
    assert "| +5.17 ± 0.76 | +2.00 ± 1.50 |" in table


PAIRED = [{"one-shot": [5.0, 4.5, 6.0], "gradual": [2.0, 3.5, 0.5]}]  # VCON's gains, paired by seed (as above)


@pytest.mark.parametrize("method, words", [(Vcon, "Vanishing Contributions"), (Gradual, "Zhu & Gupta")])
def test_a_method_described_in_other_words_keeps_its_place_and_its_baseline_columns(monkeypatch, method, words):
    """The words are the method's own (its describe()): the table shows them, and pairs and orders its rows by what
    the runs are, whatever the words."""
    monkeypatch.setattr(method, "describe", lambda self: words)
    rows = sweep.summarize(runs())
    assert [r["transition"].split(" Q=")[0] for r in rows] == ["one-shot", *(
        words if m is method else m().describe() for m in (Gradual, Vcon))]
    assert [r["_gains"] for r in rows if "_gains" in r] == PAIRED and "gain_gradual_mean" in rows[2]


def test_one_shot_in_other_words_is_still_the_baseline_and_first(monkeypatch):
    describe = sweep.describe
    monkeypatch.setattr(sweep, "describe", lambda ident: tuple(w.replace("one-shot", "Q = 0") for w in describe(ident)))
    rows = sweep.summarize(runs())
    assert [r["transition"] for r in rows] == ["Q = 0", "gradual Q=3 ep cubic", "VCON Q=3 ep linear"]
    assert [r["_gains"] for r in rows if "_gains" in r] == PAIRED and "gain_mean" in rows[2]


def test_other_compressions_are_not_paired_with_each_other():
    rows = sweep.summarize(runs("prune") + runs("quant"))
    assert len(rows) == 6
    for row in rows:
        if row["transition"].startswith("VCON"):
            assert row["_gains"]["gradual"] == [2.0, 3.5, 0.5]


def test_the_gain_plot_has_a_bar_per_baseline():
    fig = report.gains(runs())
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 2
    assert sorted(round(b.get_height(), 3) for b in bars) == [2.0, round((5 + 4.5 + 6) / 3, 3)]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["over one-shot", "over gradual"]


def test_a_single_run_shows_no_spread():
    rows = sweep.summarize(runs(accuracy={("vcon", 0): {0: 80.0, 1: 81.0}, ("vcon", 3): {0: 84.0}}))
    assert "test_std" not in rows[1] and "gain_std" not in rows[1]
    table = sweep.markdown(rows, [])
    assert "| 80.50 ± 0.71 |" in table and "| 84.00 (one run) | +4.00 (one run) |" in table


def test_accuracy_against_q_draws_a_line_per_method_from_the_shared_one_shot_runs():
    accuracy = {**ACCURACY, ("vcon", 1): {0: 82.0}, ("gradual", 1): {0: 81.5}}
    fig = report.accuracy_vs_q(runs(accuracy=accuracy))
    lines = {bars.get_label(): bars.lines[0] for bars in fig.axes[0].containers}  # one errorbar set per line
    assert sorted(lines) == ["prune 0.9 layer, VCON", "prune 0.9 layer, gradual"]
    assert list(lines["prune 0.9 layer, VCON"].get_xdata()) == [0, 1, 3]
    assert list(lines["prune 0.9 layer, VCON"].get_ydata()) == pytest.approx([80.0, 82.0, 85.1666667])
    assert list(lines["prune 0.9 layer, gradual"].get_ydata()) == pytest.approx([80.0, 81.5, 83.1666667])


def test_a_task_scored_by_another_metric_is_tabled_and_plotted_by_it():
    """A CoLA-like sweep: the headline is Matthews correlation (``test_metric``), not the accuracy beside it."""
    cola = runs(accuracy={("vcon", 0): {0: 30.0, 1: 32.0}, ("vcon", 3): {0: 40.0, 1: 41.0}})
    for run in cola:
        run["results"] |= {"metric": "matthews", "test_metric": run["results"]["test_acc"], "test_acc": 69.0}
    rows = sweep.summarize(cola)
    assert rows[1]["metric"] == "Matthews correlation" and rows[1]["gain_mean"] == pytest.approx(9.5)
    table = sweep.markdown(rows, cola)
    assert "| test Matthews correlation β=0 (%) |" in table and "| 40.50 ± 0.71 | +9.50 ± 0.71 |" in table
    fig = report.gains(cola)
    assert fig.axes[0].get_ylabel() == "VCON − baseline, test Matthews correlation (points)"


def test_a_job_refused_for_its_method_settings_gets_a_row_with_its_error():
    """The sweep table (and vcon-report, which reads the same rows) of a sweep where one job was refused before
    training for its method's settings: they are named as refused, its error listed; the other rows are as ever."""
    cfg = make_config("method=gradual", "method.svd_every=0", "vcon.epochs=3")
    compression, transition = "prune 0.9 layer", "gradual (refused settings) Q=3 ep cubic"
    failed = {"dir": identity.run_id(cfg), "identity": identity.identity(cfg), "status": "failed",
              "error": "ConfigError: ... is not allowed"}
    swept = runs() + [failed]
    rows = sweep.summarize(swept)
    row = next(r for r in rows if r["failed"])
    assert (row["compression"], row["transition"], row["runs"], row["done"]) == (compression, transition, 1, 0)
    assert [r["_gains"] for r in rows if r["transition"] == "VCON Q=3 ep linear" and r["done"]] == [
        {"one-shot": [5.0, 4.5, 6.0], "gradual": [2.0, 3.5, 0.5]}]
    table = sweep.markdown(rows, swept)
    assert f"| {compression} | {transition} | 1 (0/1) | – |" in table
    assert f"* `{failed['dir']}`: ConfigError: ... is not allowed" in table


def test_a_recipe_is_tabled_in_a_few_words_with_each_groups_figures():
    groups = {"attention": {"zero_fraction": 0.0, "bits_per_weight": 1.01, "params_before": 64, "params_after": 64},
              "mlp": {"zero_fraction": 0.95, "bits_per_weight": 2.6, "params_before": 128, "params_after": 7}}
    rs = runs("recipe-attention-binary-mlp-prune")
    for r in rs:
        r["results"]["compression"]["groups"] = groups
    rows = sweep.summarize(rs)
    assert rows[0]["compression"] == "attention: binary; mlp: prune 0.95 layer"
    assert [r["transition"] for r in rows] == ["one-shot", "gradual Q=3 ep cubic", "VCON Q=3 ep linear"]
    assert rows[2]["gain_mean"] == pytest.approx(5.17, abs=0.01)  # paired with its own one-shot runs, as any
    table = sweep.markdown(rows, rs)
    assert ("* attention: binary; mlp: prune 0.95 layer: attention: 1.01 bits/weight, 0.0 % zeros, 64 / 64 params; "
            "mlp: 2.60 bits/weight, 95.0 % zeros, 7 / 128 params") in table
    assert table.count("* attention: binary") == 1  # once, though three rows have it
