"""Prometheus metrics (`GET /metrics`, text format), one registry per app.

- `retouch_jobs{tool,status}` and `retouch_queue_depth`: read from the job store at scrape time,
  so every API process reports the same, true numbers.
- `retouch_job_latency_seconds{tool}`: creation → settlement, observed by the dispatcher.
- `retouch_pipeline_step_seconds{tool}`: time between a job's denoising steps on its replica.
- `retouch_pipeline_batch_size`: per job, how many jobs its pipeline call took together (so the
  count is the jobs run, and a mean above 1 means batches formed).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class _JobStoreCollector:
    def __init__(self, session_factory):
        self.session_factory = session_factory

    def collect(self):
        from .core.tables import Generation

        with self.session_factory() as session:
            rows = session.execute(select(Generation.tool, Generation.status, func.count())
                                   .group_by(Generation.tool, Generation.status)).all()
        jobs = GaugeMetricFamily("retouch_jobs", "Jobs in the store by tool and status",
                                 labels=["tool", "status"])
        pending = 0
        for tool, status, count in rows:
            jobs.add_metric([tool, status], count)
            pending += count if status == "pending" else 0
        yield jobs
        yield GaugeMetricFamily("retouch_queue_depth", "Jobs waiting for a replica",
                                value=pending)


class Metrics:
    def __init__(self, session_factory=None):
        self.registry = CollectorRegistry()
        self.job_latency = Histogram("retouch_job_latency_seconds",
                                     "Job creation to settlement", ["tool"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.step_time = Histogram("retouch_pipeline_step_seconds",
                                   "Time per denoising step", ["tool"], buckets=STEP_BUCKETS,
                                   registry=self.registry)
        self.batch_size = Histogram("retouch_pipeline_batch_size",
                                    "Per job: jobs handed to its pipeline call together",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        if session_factory is not None:
            self.registry.register(_JobStoreCollector(session_factory))

    def render(self) -> bytes:
        return generate_latest(self.registry)
