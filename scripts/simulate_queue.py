"""Queue wait for a job arrival rate and a number of GPU replicas: an M/M/c model (Erlang C) and a
discrete-event simulation of the same queue, side by side.

    python -m retouch.scripts.simulate_queue --arrival-rate 3 --replicas 4 --service-seconds 1.2
    python -m retouch.scripts.simulate_queue --arrival-rate 3 --service-seconds 1.2 --p99-target 5

Jobs arrive at random (Poisson, `--arrival-rate` jobs/s) into one FIFO queue served by
`--replicas` identical replicas, each taking `--service-seconds` per job on average (measure it:
one replica's img/s is 1 / service seconds; see docs/scaling.md). The simulation draws service
times from an exponential distribution (`--service exp`, what M/M/c assumes) or keeps them fixed
(`--service fixed`, closer to diffusion jobs of one quality, which take the same steps). The
queue wait is the time from arrival until a replica starts the job; add the service time for
the job's latency. `--p99-target` prints the fewest replicas whose p99 wait stays under it.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueModel:
    arrival_rate: float  # jobs per second
    replicas: int
    service_seconds: float  # mean time one replica takes per job

    @property
    def offered_load(self) -> float:
        """Erlangs: replicas kept busy on average (λ / μ)."""
        return self.arrival_rate * self.service_seconds

    @property
    def utilisation(self) -> float:
        return self.offered_load / self.replicas

    @property
    def stable(self) -> bool:
        return self.utilisation < 1.0


def erlang_c(model: QueueModel) -> float:
    """Probability that an arriving job has to wait (all replicas busy), M/M/c."""
    if not model.stable:
        return 1.0
    a, c = model.offered_load, model.replicas
    term, total = 1.0, 1.0  # a^k / k!, summed for k < c
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1.0 - model.utilisation)  # a^c / c! / (1 - ρ)
    return last / (total + last)


def analytic_wait_quantile(model: QueueModel, quantile: float) -> float:
    """The `quantile` of the M/M/c queue wait: P(W > t) = C · e^(-(cμ - λ) t)."""
    if not model.stable:
        return math.inf
    waiting = erlang_c(model)
    if 1.0 - quantile >= waiting:
        return 0.0
    drain_rate = model.replicas / model.service_seconds - model.arrival_rate
    return math.log(waiting / (1.0 - quantile)) / drain_rate


def analytic_mean_wait(model: QueueModel) -> float:
    if not model.stable:
        return math.inf
    return erlang_c(model) / (model.replicas / model.service_seconds - model.arrival_rate)


def simulate_waits(model: QueueModel, jobs: int = 50_000, *, service: str = "exp",
                   seed: int = 0) -> list[float]:
    """Queue waits of `jobs` simulated jobs (FIFO, first free replica), after a warm-up."""
    rng = random.Random(seed)
    warm_up = jobs // 10
    free_at = [0.0] * model.replicas  # when each replica finishes its current job (a heap)
    now, waits = 0.0, []
    for n in range(jobs + warm_up):
        now += rng.expovariate(model.arrival_rate)
        earliest = heapq.heappop(free_at)
        start = max(now, earliest)
        duration = (rng.expovariate(1.0 / model.service_seconds) if service == "exp"
                    else model.service_seconds)
        heapq.heappush(free_at, start + duration)
        if n >= warm_up:
            waits.append(start - now)
    return waits


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replicas_needed(arrival_rate: float, service_seconds: float, p99_target_s: float) -> int:
    """The fewest replicas whose M/M/c p99 queue wait is at most `p99_target_s`."""
    replicas = max(1, math.floor(arrival_rate * service_seconds) + 1)
    while analytic_wait_quantile(QueueModel(arrival_rate, replicas, service_seconds),
                                 0.99) > p99_target_s:
        replicas += 1
    return replicas


def report(model: QueueModel, jobs: int, service: str, seed: int) -> str:
    lines = [f"arrivals {model.arrival_rate:g} jobs/s, {model.replicas} replicas × "
             f"{1 / model.service_seconds:.3g} jobs/s each (service {model.service_seconds:g} s)"
             f", utilisation {model.utilisation:.0%}"]
    if not model.stable:
        lines.append("unstable: arrivals exceed what the replicas serve; the queue grows "
                     f"without bound (needs > {model.offered_load:g} replicas)")
        return "\n".join(lines)
    waits = simulate_waits(model, jobs, service=service, seed=seed)
    lines.append(f"M/M/c (Erlang C)     P(wait) {erlang_c(model):6.1%}  "
                 f"p50 {analytic_wait_quantile(model, 0.5):7.2f} s  "
                 f"p99 {analytic_wait_quantile(model, 0.99):7.2f} s  "
                 f"mean {analytic_mean_wait(model):7.2f} s")
    waited = sum(1 for w in waits if w > 0) / len(waits)
    lines.append(f"simulated ({service:5s})    P(wait) {waited:6.1%}  "
                 f"p50 {quantile(waits, 0.5):7.2f} s  p99 {quantile(waits, 0.99):7.2f} s  "
                 f"mean {sum(waits) / len(waits):7.2f} s  ({jobs} jobs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrival-rate", type=float, required=True, help="jobs per second")
    parser.add_argument("--service-seconds", type=float, required=True,
                        help="mean seconds one replica takes per job (1 / its img/s)")
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--p99-target", type=float, default=None,
                        help="print the fewest replicas whose p99 queue wait is under this")
    parser.add_argument("--service", choices=("exp", "fixed"), default="exp")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.replicas is None and args.p99_target is None:
        parser.error("give --replicas, --p99-target, or both")
    if args.p99_target is not None:
        needed = replicas_needed(args.arrival_rate, args.service_seconds, args.p99_target)
        print(f"{needed} replicas keep the p99 queue wait under {args.p99_target:g} s (M/M/c)")
    replicas = args.replicas if args.replicas is not None else needed
    print(report(QueueModel(args.arrival_rate, replicas, args.service_seconds), args.jobs,
                 args.service, args.seed))


if __name__ == "__main__":
    main()
