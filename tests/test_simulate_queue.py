"""scripts/simulate_queue.py: Erlang C against closed forms, the simulation against Erlang C,
fixed service times against exponential ones, and the replica count it recommends."""

from __future__ import annotations

import math

import pytest

from retouch.scripts.simulate_queue import (QueueModel, analytic_mean_wait,
                                            analytic_wait_quantile, erlang_c, main, quantile,
                                            replicas_needed, simulate_waits)


def test_one_replica_matches_the_mm1_closed_form():
    model = QueueModel(arrival_rate=0.5, replicas=1, service_seconds=1.0)
    assert erlang_c(model) == pytest.approx(0.5)  # M/M/1: P(wait) = ρ
    assert analytic_mean_wait(model) == pytest.approx(0.5 / (1.0 - 0.5))  # ρ / (μ - λ)
    # P(W > t) = ρ e^{-(μ-λ)t}: the p99 solves 0.01 = 0.5 e^{-0.5 t}.
    assert analytic_wait_quantile(model, 0.99) == pytest.approx(math.log(50) / 0.5)
    assert analytic_wait_quantile(model, 0.5) == 0.0  # half the jobs never wait


def test_the_simulation_agrees_with_erlang_c():
    model = QueueModel(arrival_rate=2.8, replicas=4, service_seconds=1.0)  # 70% busy
    waits = simulate_waits(model, 200_000, service="exp", seed=1)
    assert sum(w > 0 for w in waits) / len(waits) == pytest.approx(erlang_c(model), abs=0.02)
    assert sum(waits) / len(waits) == pytest.approx(analytic_mean_wait(model), rel=0.1)
    assert quantile(waits, 0.99) == pytest.approx(analytic_wait_quantile(model, 0.99), rel=0.1)


def test_fixed_service_times_wait_less_than_exponential_ones():
    model = QueueModel(arrival_rate=3.0, replicas=4, service_seconds=1.0)
    fixed = simulate_waits(model, 50_000, service="fixed", seed=2)
    exponential = simulate_waits(model, 50_000, service="exp", seed=2)
    assert quantile(fixed, 0.99) < 0.8 * quantile(exponential, 0.99)


def test_replicas_needed_is_the_fewest_that_meet_the_target():
    needed = replicas_needed(arrival_rate=3.0, service_seconds=1.2, p99_target_s=2.0)
    assert analytic_wait_quantile(QueueModel(3.0, needed, 1.2), 0.99) <= 2.0
    assert analytic_wait_quantile(QueueModel(3.0, needed - 1, 1.2), 0.99) > 2.0
    assert not QueueModel(3.0, 3, 1.2).stable and erlang_c(QueueModel(3.0, 3, 1.2)) == 1.0


def test_the_command_prints_p50_and_p99(capsys):
    main(["--arrival-rate", "3", "--replicas", "4", "--service-seconds", "1.2", "--jobs", "5000"])
    out = capsys.readouterr().out
    assert "utilisation 90%" in out and out.count("p99") == 2 and "p50" in out
    main(["--arrival-rate", "5", "--replicas", "4", "--service-seconds", "1.2"])
    assert "unstable" in capsys.readouterr().out
