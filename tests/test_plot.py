"""fal-plot turns results files into a PNG learning curve."""

from __future__ import annotations

import json

from launcher import plot


def _results(path, strategy, seed, accs):
    cycles = [{"labeled-fraction": 0.1 + 0.05 * i, "evaluation": {"accuracy": a}} for i, a in enumerate(accs)]
    cfg = {"strategy": strategy, "seed": seed, "dataset": "digits", "num-clients": 3, "partition": "iid", "alpha": 1.0}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"config": cfg, "cycles": cycles}))


def test_plot_writes_png_with_one_curve_per_strategy(tmp_path, capsys):
    _results(tmp_path / "a", "random", 0, [0.5, 0.6])
    _results(tmp_path / "b", "random", 1, [0.52, 0.61])
    _results(tmp_path / "c", "entropy", 0, [0.5, 0.7])
    out = tmp_path / "curve.png"
    assert plot.main([str(tmp_path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 runs, 2 curves" in capsys.readouterr().out


def test_plot_reports_missing_results(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nothing-here")]) == 1
