"""tools/shift_traces.py: a reading of ``psic eval --shift-for``'s per-photo searches (steps, margins, traces), and what
a lower cap on the steps would keep. Hand-made rows, milliseconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "shift_traces.py"


def _tool():
    spec = importlib.util.spec_from_file_location("shift_traces", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(trace, steps, right=True, turned=True, scale="native"):
    return {"scale": scale, "name": "p", "base_right": right, "encrypted_right": right and not turned,
            "shift_search": {"steps": steps, "margin_before": trace[0], "margin_after": -1.5 if turned else 0.5,
                             "trace": trace}}


ROWS = [
    _row([-0.5, -2.0], 1),                          # the adapter alone turns it; one step makes the margin 1 deep
    _row([1.0, 0.2, -1.2], 2),                      # turned at step 2
    _row([2.0, 1.5, 1.0, 0.5, -0.2, -0.6], 6),      # ran to the cap of 6 below 0 but not 1 deep: turned after rounding
    _row([3.0, 2.9, 2.8, 2.7, 2.6, 2.5], 6, turned=False),  # never turned
    _row([1.0, -1.5], 1, right=False, turned=False),        # wrong on the base decode: searched, not counted
    _row([0.5, -1.1], 1, scale="512"),
]


def _run(rows, cap=6, name="e/a", same_target=True):
    return {"name": name, "cap": cap, "same_target": same_target, "rows": rows}


def test_the_reading_counts_searches_and_what_a_lower_cap_keeps():
    tool = _tool()
    s = tool.summarize(_run(ROWS), caps=[1, 2, 5, 6])
    native = s["native"]
    assert (native["photos"], native["right"], native["alone"], native["turned"]) == (5, 4, 1, 2 + 1)
    assert (native["stopped"], native["ran_out"], native["cap"]) == (3, 2, 6)  # ran out: all the steps, or gave up
    assert (native["passes_stopped"], native["passes_ran_out"]) == (2 + 3 + 2, 6 + 6)
    # cap 1: only the search that stopped after one step is the same search
    assert native["at_cap"][1] == {"exact": 1, "likely": 0, "passes": 5}
    # cap 2: the second search stopped after its second step, so cap 2 takes the same two steps and keeps its shift
    assert native["at_cap"][2] == {"exact": 2, "likely": 0, "passes": 2 + 2 + 2 + 2 + 2}
    # cap 5: the long search's margin after 5 steps is below 0 (likely turned), the flat one's is not
    assert native["at_cap"][5] == {"exact": 2, "likely": 1, "passes": 2 + 3 + 5 + 5 + 2}
    assert native["at_cap"][6] == {"exact": 3, "likely": 0, "passes": 2 + 3 + 6 + 6 + 2}  # the eval's own cap
    assert s["512"]["photos"] == 1 and s["512"]["turned"] == 1


def test_an_unfinished_decode_another_target_or_a_cap_over_the_evals():
    tool = _tool()
    nan = _row([None, None, None], 3)  # a decode that was not finite: metrics.json keeps null
    nan["shift_search"]["margin_before"] = None
    s = tool.summarize(_run([nan], cap=3), caps=[2])["native"]
    assert (s["right"], s["alone"], s["at_cap"][2]["likely"]) == (1, 0, 0)
    assert tool.summarize(_run(ROWS, same_target=False))["native"]["alone"] is None
    gave_up = _row([3.0] * 11, 10, turned=False)  # given up after 10 steps (ShiftSearch.give_up): not an answer changed
    gave_up["shift_search"]["gave_up"] = True
    s = tool.summarize(_run([gave_up], cap=40), caps=[20])["native"]
    assert (s["stopped"], s["ran_out"], s["passes_ran_out"], s["at_cap"][20]["passes"]) == (0, 1, 11, 11)
    try:
        tool.summarize(_run(ROWS), caps=[7])
    except SystemExit as e:
        assert "searched at most 6 steps" in str(e)
    else:
        raise AssertionError("a cap over the eval's own was read")


def test_the_tool_reads_eval_folders_keeps_runs_apart_and_refuses_what_is_not_one(tmp_path, capsys):
    tool = _tool()
    (tmp_path / "e").mkdir()
    search = {"target": "t", "steps": 6}
    (tmp_path / "e" / "metrics.json").write_text(json.dumps({"schema": 2, "runs": [
        {"target": "t", "meta": {"name": "a", "photo_shift": search},
         "per_image": ROWS + [{"scale": "native", "name": "no search"}]},
        {"target": "t", "meta": {"name": "b", "photo_shift": search}, "per_image": ROWS[:1]}]}))
    assert tool.main([str(tmp_path / "e"), "--caps", "2", "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "e/a native: 5 photos, 4 right on the base decode; turned by the adapter alone 1, with the shift 3" in printed
    assert "e/b native: 1 photos" in printed  # two adapters in one eval: two readings, not one pooled
    assert json.loads((tmp_path / "s.json").read_text())["e/a"]["native"]["at_cap"]["2"]["exact"] == 2
    (tmp_path / "bad.json").write_text("{not json")
    try:
        tool.main([str(tmp_path / "bad.json")])
    except SystemExit as e:
        assert "not a readable metrics.json" in str(e)
    else:
        raise AssertionError("a broken metrics.json was read")
    (tmp_path / "old.json").write_text(json.dumps({"runs": [{"per_image": [{"scale": "native"}]}]}))
    assert tool.main([str(tmp_path / "old.json")]) == 1
