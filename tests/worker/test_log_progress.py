"""relay.worker.log_progress: the step and metrics from Megatron's and slime's own log lines."""

from __future__ import annotations

import math

import pytest

from relay.worker.log_progress import parse_log_line
from relay_testkit.fake_megatron import log_line


def test_megatron_training_log_line_gives_the_step_and_metrics() -> None:
    line = log_line(100, 1000, lr=1e-5, loss=1.234567, grad_norm=0.5, ms=1234.5)
    got = parse_log_line(line)
    assert got is not None and got.step == 100 and got.source == "megatron"
    m = got.metrics
    assert m["loss"] == pytest.approx(1.234567) and m["learning_rate"] == pytest.approx(1e-5)
    assert m["grad_norm"] == 0.5 and m["iteration_ms"] == 1234.5 and m["global_batch_size"] == 8
    assert m["total_steps"] == 1000 and m["consumed_samples"] == 800 and m["skipped_iterations"] == 0


def test_megatron_line_as_printed_upstream_with_extra_fields() -> None:
    line = (
        " [2026-05-01 12:00:00.123456] iteration      100/    1000 | consumed samples:        12800 | "
        "elapsed time per iteration (ms): 1234.5 | throughput per GPU (TFLOP/s/GPU): 401.2 | "
        "learning rate: 1.000000E-05 | global batch size:   128 | lm loss: 1.234567E+00 | "
        "mtp_1 loss: 2.500000E+00 | loss scale: 1.0 | grad norm: 0.123 | num zeros: 0 | "
        "number of skipped iterations:   0 | number of nan iterations:   0 |"
    )
    got = parse_log_line(line)
    assert got is not None and got.step == 100
    assert got.metrics["tflops_per_gpu"] == 401.2 and got.metrics["mtp_1_loss"] == 2.5
    assert got.metrics["loss"] == pytest.approx(1.234567)


def test_slime_lines() -> None:
    perf = parse_log_line(
        "[2026-05-01 12:00:00] INFO train_metric_utils.py:401 perf 9: {'perf/train_time': 12.5}"
    )
    assert perf is not None and perf.step == 9 and perf.source == "slime"
    assert perf.metrics == {"perf/train_time": 12.5}
    step = parse_log_line(
        "step 37: {'train/loss': 0.5, 'train/grad_norm': 1.5, 'train/lr-pg_0': 1e-06, 'train/step': 37}"
    )
    assert step is not None and step.step is None  # an optimizer step inside a rollout, not the relay step
    assert step.metrics == {"loss": 0.5, "grad_norm": 1.5, "learning_rate": 1e-06, "optimizer_step": 37.0}
    roll = parse_log_line("rollout 9: {'rollout/raw_reward': 0.75, 'rollout/response_len': 'n/a'}")
    assert roll is not None and roll.step is None and roll.metrics == {"rollout/raw_reward": 0.75}


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Training 10/100 [00:01<00:09, 9.9it/s]",
        "loss: 1.0",
        "step 3: {not python}",
        "step 3: [1, 2]",
        "perf 9: {'a': __import__('os')}",  # never evaluated: literal_eval only
        " iteration x/ 10 | lm loss: 1 |",
        "x" * 70000,
    ],
)
def test_other_lines_report_nothing(line: str) -> None:
    assert parse_log_line(line) is None


def test_non_finite_values_are_dropped() -> None:
    got = parse_log_line(
        " iteration        5/      10 | lm loss: nan | grad norm: inf | learning rate: 1.0E-3 |"
    )
    assert got is not None and got.step == 5 and "loss" not in got.metrics and "grad_norm" not in got.metrics
    assert math.isclose(got.metrics["learning_rate"], 1e-3)
    assert parse_log_line("perf 2: {'x': float('nan')}") is None  # not a literal: the line is skipped
    got = parse_log_line("perf 2: {'y': 1e400, 'z': True, 'ok': 3}")
    assert got is not None and got.metrics == {"ok": 3.0}
