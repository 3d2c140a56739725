"""Phase timings and step bars (training/progress.py)."""

from __future__ import annotations

import logging
import time

import pytest

from mimea.training.progress import Phases, StepBar, format_seconds, process_start


def test_phases_time_each_phase_and_log_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mimea.training.progress")
    phases = Phases()
    with phases.phase("load"):
        time.sleep(0.02)
    with phases.phase("features"):
        pass
    with phases.phase("load"):  # a phase that runs again adds up
        time.sleep(0.02)
    assert list(phases.seconds) == ["load", "features"]
    assert phases.seconds["load"] >= 0.04
    assert [r.getMessage().split(" done in ")[0] for r in caplog.records] == [
        "load", "features", "load"]


def test_report_adds_the_rest_and_the_total() -> None:
    phases = Phases(started=time.perf_counter() - 1.0)  # a second of start-up before it
    with phases.phase("training"):
        time.sleep(0.01)
    report = phases.report()
    assert list(report) == ["training", "other", "total"]
    assert report["other"] >= 0.99
    assert report["training"] + report["other"] == pytest.approx(report["total"], abs=0.02)


def test_a_failed_phase_is_timed_but_not_reported_done(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mimea.training.progress")
    phases = Phases()
    with pytest.raises(RuntimeError), phases.phase("load"):
        raise RuntimeError("broken file")
    assert "load" in phases.seconds
    assert not caplog.records


def test_summary_is_one_line_total_first() -> None:
    line = format_seconds({"load": 1.25, "training": 10.0, "other": 0.5, "total": 11.75})
    assert line == "11.8 s in all: load 1.2 s, training 10.0 s, other 0.5 s"
    assert "\n" not in Phases().summary()


def test_process_start_is_in_the_past() -> None:
    assert process_start() <= time.perf_counter()


def test_step_bar_advances_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    with StepBar("evaluation", 2, enabled=True) as bar:
        with bar.step("test rankings"):
            pass
        with bar.step("served ranking"):
            pass
    err = capsys.readouterr().err
    assert "evaluation" in err and "/2 [" in err and "served ranking" in err
    with StepBar("evaluation", 1, enabled=False) as quiet, quiet.step("anything"):
        pass
    assert capsys.readouterr().err == ""
