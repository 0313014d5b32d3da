"""Running the ladder: each backend in its own worker, the oracle and every verdict in this process.

Backends run one at a time, as in ``bench run``. The parent plans the jobs, sends each to the
backend's worker, computes the NumPy oracle's answer (cached per job and rules, shared by every
backend) and compares; then it asks the worker for the statistical rung's per-seed accuracies and
runs the TOST on them beside the NumPy reference's own accuracies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import backends
from backends.base import Backend, Unsupported
from backends.numpy_backend import NumpyBackend
from bench.parity import equivalence
from bench.parity.compare import Check, compare, error_check
from bench.parity.ladder import PARITY_EPSILON
from bench.parity.measure import Oracle, fixed_batch
from bench.parity.plan import Job, plan
from bench.parity.worker import InProcess, InWorker, JobFailed, ParitySettings, Session
from bench.run.executors.process import Kind, worker_cpu_set


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run
    statistical: list[equivalence.EquivalenceResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # backend -> why it failed to start, or has no statistical rung
    workers: dict[str, dict] = field(default_factory=dict)  # backend -> its worker process (pid, versions)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and all(r.passed for r in self.statistical)


def _open(name: str, settings: ParitySettings, instances: dict[str, Backend], report: ParityReport) -> Session | None:
    """A session for one backend: in-process if supplied, else a ready worker; None if it cannot run."""
    if name in instances:
        return InProcess(instances[name], settings)
    session = InWorker(name, settings)
    reason = backends.unavailable_reason(name)
    failed = session.start() if reason is None else None
    if reason is not None or (failed is not None and failed.kind is Kind.UNAVAILABLE):
        report.skipped[name] = reason or str(failed.payload)  # not installed, or not here: skipped
        return None
    if failed is not None:  # installed but broken, or its worker died: a failure, never a pass
        report.errors[name] = f"could not start: {failed.payload}"
        return None
    report.workers[name] = session.facts
    return session


def _ladder(name: str, session: Session, jobs: list[Job], oracle: Oracle, report: ParityReport,
            progress: Callable[[str], None]) -> None:
    for job in jobs:
        progress(f"{name}: {job.label}")
        try:
            got = session.measure(job)
        except Unsupported as exc:
            report.skipped[name] = str(exc)
            return
        except JobFailed as exc:
            report.checks.append(error_check(name, job, str(exc)))
            continue
        report.checks += compare(name, job, got, oracle)


def run_parity(
    backend_names: list[str],
    models: list[str],
    optimizers: list[str],
    activations: list[str],
    losses: list[str] = ("cce",),
    epsilon: float = PARITY_EPSILON,
    mode: str = "default",
    threads: int = 1,
    statistical: bool = True,
    seeds: int = equivalence.SEEDS,
    epochs: int = equivalence.EPOCHS,
    schedule: str = "constant",
    instances: dict[str, Backend] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Run the ladder (and the statistical rung) for each backend.

    ``instances`` supplies backends by name, set up already, that run in this process (tests plant
    bugs this way); the others run in their own worker. A backend whose framework is missing is
    reported as skipped; one that is installed but cannot start is an error (the report fails).
    """
    progress = progress or (lambda text: None)
    instances = instances or {}
    report = ParityReport()
    batch = fixed_batch()
    settings = ParitySettings(threads, worker_cpu_set(threads), batch, epsilon, mode)
    oracle = Oracle(batch, epsilon, threads)
    jobs = plan(list(models), list(optimizers), list(activations), list(losses), schedule)
    accuracies: dict[str, list[float]] = {}
    for name in backend_names:
        session = _open(name, settings, instances, report)
        if session is None:
            continue
        try:
            _ladder(name, session, jobs, oracle, report, progress)
            if statistical and name not in report.skipped:
                progress(f"{name}: statistical rung, {seeds} seeds of mlp/adam on digits")
                accuracies[name] = [session.accuracy(seed, epochs) for seed in range(seeds)]
        except (Unsupported, JobFailed) as exc:
            report.errors[name] = f"statistical rung: {exc}"
        finally:
            session.close()
    if accuracies:
        progress(f"reference: statistical rung, {seeds} seeds")
        anchor = NumpyBackend()
        anchor.setup(threads)
        reference = [equivalence.final_accuracy(anchor, seed, epochs) for seed in range(seeds)]
        report.statistical = equivalence.statistical_rung({"reference": reference} | accuracies)
    return report
