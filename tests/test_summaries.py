"""Per-client summaries: logs and results readable at many clients, the detail kept in results.json."""

from __future__ import annotations

import pytest

from fal_shared.summaries import LIST_AT_MOST, compact_ids, describe, grouped, per_client_text, summarize
from server_app.inprocess import run_inprocess


def test_summarize_gives_count_min_median_max_and_sum():
    assert summarize([6, 9, 6, 7]) == {"count": 4, "min": 6, "median": 6.5, "max": 9, "sum": 28}
    s = summarize({"0": 0.5, "1": 1.5, "2": 0.25})  # a mapping: its values
    assert s == {"count": 3, "min": 0.25, "median": 0.5, "max": 1.5, "sum": 2.25}
    assert isinstance(summarize([1, 2])["max"], int) and isinstance(s["max"], float)
    assert summarize([]) == {"count": 0}
    with pytest.raises(ValueError, match="numbers"):
        summarize(["a", "b"])


def test_describe_reads_as_one_short_phrase():
    assert describe(summarize([6, 6, 9])) == "min 6 / median 6 / max 9 over 3 clients"
    assert describe(summarize([0.0123456]), " s") == "min 0.0123 s / median 0.0123 s / max 0.0123 s over 1 client"
    assert describe({"count": 0}) == "no clients"


def test_compact_ids_are_sorted_ranges_and_stop_after_the_limit():
    assert compact_ids([5, 0, 1, 2, 3, 9, 10]) == "0-3, 5, 9-10"
    assert compact_ids(range(1000)) == "0-999"
    assert compact_ids([]) == "none"
    assert compact_ids(range(0, 40, 2), limit=3) == "0, 2, 4, ... (20 in all)"


def test_per_client_text_lists_few_clients_and_summarises_many():
    few = {str(p): 6 for p in range(LIST_AT_MOST)}
    assert per_client_text(few) == " ".join(f"{p}:6" for p in range(LIST_AT_MOST))
    many = {str(p): 6 + (p == 7) for p in range(1000)}
    assert per_client_text(many) == "min 6 / median 6 / max 7 over 1000 clients"


def test_grouped_puts_clients_with_the_same_note_on_one_line():
    notes = {p: "labeling tool unreachable" for p in range(500)} | {500: "other"}
    assert grouped(notes) == [("0-499", "labeling tool unreachable"), ("500", "other")]


def test_a_run_with_many_clients_logs_summaries_and_keeps_the_detail_in_results(small_run, capsys):
    clients = LIST_AT_MOST + 2
    results = run_inprocess({**small_run, "num-cycles": 1, "rounds-per-cycle": 1, "strategy": "entropy"},
                            num_clients=clients)
    out = capsys.readouterr().out
    cycle_lines = [line for line in out.splitlines() if line.startswith("[FAL] cycle ")]
    assert len(cycle_lines) == 2
    first = results["cycles"][0]
    labeled = list(first["labeled-per-client"].values())
    assert len(labeled) == clients  # the per-client detail stays in results.json
    assert f"per client min {min(labeled)} / median " in cycle_lines[0]
    assert f"over {clients} clients" in cycle_lines[0] and " 0:" not in cycle_lines[0].split("per client")[1]
    summaries = first["summaries"]
    assert summaries["labeled-per-client"] == summarize(labeled)
    assert summaries["budgets"] == summarize(list(first["budgets"].values()))
    assert summaries["selected-per-client"]["count"] == clients
    assert summaries["selected-per-client"]["sum"] == sum(len(v) for v in first["selected-ids"].values())
    seconds = summaries["client-compute-seconds"]
    assert seconds["train"]["count"] == clients  # one FedAvg round: one train message per client
    assert seconds["query.select"]["count"] == clients
    assert 0 <= seconds["train"]["min"] <= seconds["train"]["median"] <= seconds["train"]["max"]
