"""The metric registry: every figure the reports show, declared once with how to show and judge it.

The headline table, summary.csv, ``bench compare``, the HTML page, the figures and the terminal
table at the end of ``bench run`` all take their metrics from here, so adding a metric (after its
record field in ``bench/results/record.py``) is one row below, and its label, unit and direction read the
same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports import fmt


@dataclass(frozen=True)
class Metric:
    """One measured figure: which record field, how people read it, and how two values compare."""

    field: str
    label: str
    format: fmt.Formatter
    higher_is_better: bool | None
    """None for descriptions of the model (parameters, FLOPs): neither better nor worse."""
    relative: bool = True
    """Compare as a ratio (speeds, times, memory); False compares as a difference (accuracies)."""
    headline: bool = False
    """A column of each model's headline table (page and terminal)."""
    compared: bool = False
    """Judged cell by cell by ``bench compare``."""
    gates: bool = False
    """A significant loss past ``--fail-on`` fails ``bench compare``."""
    cell_table: bool = False
    """A column of the page's table of every cell."""
    converged_only: bool = False
    """Only records whose training converged count (an unconverged accuracy is not a result)."""

    @property
    def change_format(self) -> fmt.Formatter:
        """How a comparison with another value reads: a ratio (1.27×) or a difference (+1.2 pp)."""
        return fmt.ratio if self.relative else fmt.points

    @property
    def words(self) -> tuple[str, str]:
        """What an improvement and a loss are called."""
        return ("faster", "slower") if self.relative else ("better", "worse")


METRICS = (
    Metric("test_accuracy", "Test accuracy", fmt.percent, True, relative=False, headline=True, compared=True,
           cell_table=True, converged_only=True),
    Metric("test_loss", "Test loss", fmt.sig, False),
    Metric("final_train_loss", "Final train loss", fmt.sig, False),
    Metric("val_accuracy", "Validation accuracy", fmt.percent, True, relative=False),
    Metric("train_samples_per_s", "Train throughput", fmt.rate, True, headline=True, compared=True, gates=True,
           cell_table=True),
    Metric("inference_samples_per_s", "Inference throughput", fmt.rate, True, headline=True, compared=True,
           gates=True, cell_table=True),
    Metric("train_seconds", "Train time", fmt.seconds, False),
    Metric("step_time_ms_p50", "Step time p50", fmt.milliseconds, False, compared=True, cell_table=True),
    Metric("step_time_ms_p90", "Step time p90", fmt.milliseconds, False),
    Metric("step_time_ms_p99", "Step time p99", fmt.milliseconds, False),
    Metric("compile_seconds", "Compile time", fmt.seconds, False, headline=True, compared=True, cell_table=True),
    Metric("first_step_seconds", "First step", fmt.seconds, False),
    Metric("warmup_seconds", "Warm-up", fmt.seconds, False),
    Metric("time_to_target_seconds", "Time to target", fmt.seconds, False),
    Metric("device_seconds", "Device time", fmt.seconds, False),
    Metric("cpu_seconds_per_sample", "CPU time per sample", fmt.seconds, False),
    Metric("peak_rss_bytes", "Peak host memory", fmt.nbytes, False),
    Metric("peak_device_bytes", "Peak device memory", fmt.nbytes, False),
    Metric("peak_memory_bytes", "Peak memory", fmt.nbytes, False, headline=True),
    Metric("param_count", "Parameters", fmt.count, None),
    Metric("flops_per_sample_forward", "Forward FLOPs per sample", fmt.sig, None),
    Metric("flops_per_sample_train", "Train FLOPs per sample", fmt.sig, None),
    Metric("achieved_gflops", "Achieved GFLOP/s", fmt.sig, True),
    Metric("peak_fraction", "Fraction of matmul peak", fmt.percent, True),
    Metric("duration_seconds", "Cell duration", fmt.seconds, False),
)
BY_FIELD: dict[str, Metric] = {m.field: m for m in METRICS}
HEADLINE = tuple(m for m in METRICS if m.headline)
COMPARED = tuple(m for m in METRICS if m.compared)
CELL_TABLE = tuple(m for m in METRICS if m.cell_table)
