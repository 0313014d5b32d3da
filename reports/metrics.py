"""The metric registry: every figure the reports show, declared once with how to show and judge it.

The headline table, summary.csv, ``bench compare``, the HTML page, the figures and the terminal
table at the end of ``bench run`` all take their metrics from here, so adding a metric (after its
record field in ``bench/results/record.py``) is one row below, and its label, unit and direction read the
same everywhere.

A module that needs one metric by its role (the accuracy, the training speed, the compile cost) imports
its named constant below, never its record field's name: this module is the only place in ``reports/``
a metric's field is spelled, so renaming a field is one edit here (and the record schema).
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
    sampled_by: str | None = None
    """The record field counting the samples this figure is taken from: a record with fewer than
    ``MIN_STEP_SAMPLES`` shows none (reports/records.py hides it), whatever an older record holds."""

    @property
    def change_format(self) -> fmt.Formatter:
        """How a comparison with another value reads: a ratio (1.27×) or a difference (+1.2 pp)."""
        return fmt.ratio if self.relative else fmt.points

    @property
    def unit(self) -> str:
        """The unit of the record field's values (what an export beside the value must say), '' for counts."""
        return UNITS.get(self.format, "")

    @property
    def words(self) -> tuple[str, str]:
        """What an improvement and a loss are called."""
        return ("faster", "slower") if self.relative else ("better", "worse")


UNITS: dict[fmt.Formatter, str] = {
    fmt.rate: "samples/s", fmt.seconds: "s", fmt.milliseconds: "ms", fmt.nbytes: "bytes", fmt.percent: "fraction",
}
"""A record field's unit by how it is shown: the formatter knows what the stored number is."""

TEST_ACCURACY = Metric("test_accuracy", "Test accuracy", fmt.percent, True, relative=False, headline=True,
                       compared=True, cell_table=True, converged_only=True)
FINAL_TRAIN_LOSS = Metric("final_train_loss", "Final train loss", fmt.sig, False)
TRAIN_THROUGHPUT = Metric("train_samples_per_s", "Train throughput", fmt.rate, True, headline=True, compared=True,
                          gates=True, cell_table=True)
INFERENCE_THROUGHPUT = Metric("inference_samples_per_s", "Inference throughput", fmt.rate, True, headline=True,
                              compared=True, gates=True, cell_table=True)
TRAIN_TIME = Metric("train_seconds", "Train time", fmt.seconds, False)
COMPILE_TIME = Metric("compile_seconds", "Compile time", fmt.seconds, False, headline=True, compared=True,
                      cell_table=True)
TIME_TO_TARGET = Metric("time_to_target_seconds", "Time to target", fmt.seconds, False)
PEAK_HOST_MEMORY = Metric("peak_rss_bytes", "Peak host memory", fmt.nbytes, False, headline=True)
PEAK_DEVICE_MEMORY = Metric("peak_device_bytes", "Peak device memory", fmt.nbytes, False, headline=True)
"""Host RSS and device bytes are different quantities, each in a column of its own: a GPU cell's
device memory is never compared with a CPU cell's resident set (docs/architecture.md, "Devices")."""
CELL_DURATION = Metric("duration_seconds", "Cell duration", fmt.seconds, False)
STEP_TIME_SAMPLES = Metric("step_time_samples", "Step-time samples", fmt.count, None, cell_table=True)
"""How many timed steps the step-time percentiles come from (printed beside them)."""
FIRST_STEP = Metric("first_step_seconds", "First step", fmt.seconds, False)
"""The first training step alone: tracing, compilation (or loading compiled code) and one step."""
COMPILE_CACHE = "compile_cache"
"""The record field saying whether a cell's compiled code came from a persistent cache (off, cold, warm)."""
WARM_COMPILE_TIME = Metric("warm_compile_seconds", "Warm compile time", fmt.seconds, False)
"""Under --compile-cache cold: the compile cost again, from the caches the cold compile filled."""
WARM_FIRST_STEP = Metric("warm_first_step_seconds", "Warm first step", fmt.seconds, False)
GRAPHS = Metric("graphs", "Compiled graphs", fmt.count, None)
GRAPH_BREAKS = Metric("graph_breaks", "Graph breaks", fmt.count, False)

METRICS = (
    TEST_ACCURACY,
    Metric("test_loss", "Test loss", fmt.sig, False),
    FINAL_TRAIN_LOSS,
    Metric("val_accuracy", "Validation accuracy", fmt.percent, True, relative=False),
    TRAIN_THROUGHPUT,
    INFERENCE_THROUGHPUT,
    TRAIN_TIME,
    Metric("step_time_ms_p50", "Step time p50", fmt.milliseconds, False, compared=True, cell_table=True,
           sampled_by=STEP_TIME_SAMPLES.field),
    Metric("step_time_ms_p90", "Step time p90", fmt.milliseconds, False, sampled_by=STEP_TIME_SAMPLES.field),
    Metric("step_time_ms_p99", "Step time p99", fmt.milliseconds, False, sampled_by=STEP_TIME_SAMPLES.field),
    STEP_TIME_SAMPLES,
    COMPILE_TIME,
    FIRST_STEP,
    WARM_COMPILE_TIME,
    WARM_FIRST_STEP,
    GRAPHS,
    GRAPH_BREAKS,
    Metric("warmup_seconds", "Warm-up", fmt.seconds, False),
    TIME_TO_TARGET,
    Metric("device_seconds", "Device time", fmt.seconds, False),
    Metric("cpu_seconds_per_sample", "CPU time per sample", fmt.seconds, False),
    PEAK_HOST_MEMORY,
    PEAK_DEVICE_MEMORY,
    Metric("param_count", "Parameters", fmt.count, None),
    Metric("flops_per_sample_forward", "Forward FLOPs per sample", fmt.sig, None),
    Metric("flops_per_sample_train", "Train FLOPs per sample", fmt.sig, None),
    Metric("achieved_gflops", "Achieved GFLOP/s", fmt.sig, True),
    Metric("peak_fraction", "Fraction of matmul peak", fmt.percent, True),
    Metric("peak_gflops", "Matmul peak of the cell's device and precision", fmt.sig, None),
    CELL_DURATION,
)
BY_FIELD: dict[str, Metric] = {m.field: m for m in METRICS}
HEADLINE = tuple(m for m in METRICS if m.headline)
COMPARED = tuple(m for m in METRICS if m.compared)
CELL_TABLE = tuple(m for m in METRICS if m.cell_table)
SAMPLED = tuple(m for m in METRICS if m.sampled_by)
"""Figures shown only where enough samples stand behind them (MIN_STEP_SAMPLES)."""
