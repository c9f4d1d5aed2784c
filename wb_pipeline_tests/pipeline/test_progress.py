"""The run log a person follows: one line per finished step (time, rows), progress with rate and ETA."""

import dagster as dg

from wb_pipeline.defs.progress import log_finished_step, progress_logger


@dg.asset
def counted():
    return dg.Output([1, 2, 3], metadata={"dagster/row_count": 3})


@dg.multi_asset(outs={"left": dg.AssetOut(), "right": dg.AssetOut()})
def pair(context: dg.AssetExecutionContext, counted):
    report = progress_logger(context, "pair", "halves done")
    report(1, 2, 4.0)
    yield dg.Output(1, output_name="left", metadata={"dagster/row_count": 1200})
    yield dg.Output(2, output_name="right", metadata={"dagster/row_count": 5})


@dg.asset_check(asset="left")
def left_is_there(left):
    return dg.AssetCheckResult(passed=left == 1)


def test_one_line_per_finished_step_with_time_and_rows():
    job = dg.define_asset_job("progress_job", selection=dg.AssetSelection.all(), hooks={log_finished_step})
    defs = dg.Definitions(
        assets=[counted, pair],
        asset_checks=[left_is_there],
        jobs=[job],
        resources={"io_manager": dg.InMemoryIOManager()},
    )
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("progress_job").execute_in_process(instance=instance)
        assert result.success
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    finished = sorted(m for m in messages if m.startswith("finished "))
    assert len(finished) == 3  # two assets and the check, once each
    assert finished[0].startswith("finished counted in ") and finished[0].endswith(" s (counted: 3 rows)")
    assert finished[1].startswith("finished left_left_is_there in ") and "rows" not in finished[1]
    assert finished[2].startswith("finished pair in ") and finished[2].endswith("(left: 1,200 rows, right: 5 rows)")
    seconds = float(finished[2].removeprefix("finished pair in ").split(" s ")[0])
    assert 0 <= seconds < 60
    assert "pair: 1/2 halves done (0.25/s), ETA 4s" in messages
