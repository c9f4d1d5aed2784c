"""benchmarks/pipeline_profile.py: CPU attribution per step from the success hook's marks, and its table."""

import json
import os

from benchmarks.pipeline_profile import markdown, step_cpu_seconds


def test_cpu_per_step_in_process_deltas_and_other_processes_totals(tmp_path):
    marks = tmp_path / "marks.jsonl"
    me, other = os.getpid(), os.getpid() + 1
    marks.write_text(
        "\n".join(
            json.dumps(m)
            for m in [
                {"step": "a", "pid": me, "cpu": 12.0},
                {"step": "b", "pid": other, "cpu": 7.5},  # a step's own process: its whole CPU
                {"step": "c", "pid": me, "cpu": 20.5},
            ]
        )
        + "\n"
    )
    assert step_cpu_seconds(marks, cpu_before=10.0) == {"a": 2.0, "b": 7.5, "c": 8.5}
    assert step_cpu_seconds(tmp_path / "missing.jsonl", 0.0) == {}


def test_markdown_table_totals():
    profile = {
        "executor": "multiprocess",
        "raw_dir": "x",
        "run_wall_s": 30.0,
        "run_cpu_s": 40.0,
        "cpus": 2,
        "load_average": (1.0, 1.0, 1.0),
        "success": True,
        "when": "now",
        "first_finished": None,
        "steps": [
            {"step": "s1", "wall_s": 20.0, "cpu_s": 30.0, "rows": 1200, "startup_s": 4.0},
            {"step": "s2", "wall_s": 5.0, "cpu_s": None, "rows": None, "startup_s": 3.0},
        ],
    }
    text = markdown(profile)
    assert "| s1 | 20.0 | 30.0 | 1.50 | 1,200 | 4.0 |" in text
    assert "| s2 | 5.0 | — | — | — | 3.0 |" in text
    assert "sum of step walls 25.0 s, worker start-ups 7.0 s" in text
