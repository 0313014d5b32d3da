"""Steps in a history: where a run left the level of the runs before it, judged so a sceptic accepts it.

Each point of a chain (reports/history/series.py: one series, cell and metric) is judged against
the points before it, by these rules (docs/architecture.md, "History"):

- **Test.** A lookback t-test (bench/results/stats.py ``step_test``): the run's mean against the
  earlier runs' means, on log values for speeds, times and memory (a change is a ratio) and on raw
  values for accuracy. The unit is the run, not the repeat: repeats of one run share its machine
  state, so testing repeats against pooled repeats (Mann-Whitney, Welch, Brunner-Munzel) calls
  ordinary run-to-run drift a change. The earlier runs' spread of means is the noise, unless the
  repeats' own spread says it is larger; this is Conbench's lookback z-score with an exact t
  reference, so its p-values can be corrected.
- **Enough data, or "cannot judge".** The judged run needs ``MIN_REPEATS`` repeats and the lookback
  ``MIN_EARLIER`` earlier runs with values (so the noise has two degrees of freedom at least);
  otherwise the verdict is "cannot judge" with the reason, never "no change". A run with values
  where the run before had none is "cannot judge" too; a run in which a cell stopped finishing is
  its own verdict.
- **Lookback.** At most ``LOOKBACK`` earlier runs, and none from before the last step found in the
  chain: after a step the level is the new one. Framework upgrades and code changes are marked,
  not cut: the test across them is how the history says whether an upgrade moved a figure.
- **Size.** A step must be at least the minimum effect (``--min-effect``, 5% as ``bench compare``'s
  noise floor; 1 percentage point for accuracy) as well as significant.
- **Multiplicity.** Benjamini-Hochberg over every test of the report (every chain and run), q <
  0.05. Which runs start a segment depends on the steps found and those on the segments, so the
  two are computed together until they agree (``judge``). ``bench history check`` asks one
  question, whether the newest run regressed, and corrects over that run's gated tests only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench.results.stats import StepTest, benjamini_hochberg, step_test
from reports import fmt
from reports.compare import ACCURACY_FLOOR, DEFAULT_NOISE_FLOOR, SIGNIFICANCE, STOPPED
from reports.history.series import Chain, Point

MIN_REPEATS = 2
"""Repeats the judged run needs: with one, its value may be one disturbed repeat and has no spread of its own."""
MIN_EARLIER = 3
"""Earlier runs the lookback needs: their spread of means is the noise, and two runs give it one degree of freedom."""
LOOKBACK = 10
"""Most earlier runs a point is judged against: older runs speak of an older machine state."""
MAX_ROUNDS = 20
"""Rounds of segmenting and judging before giving up on agreement (it is reached in two or three)."""
NO_STEP = "no step found"
CANNOT = "cannot judge"
TEST_NAME = "lookback t-test on run means"


@dataclass
class Judgement:
    """One point of one chain, judged against its lookback."""

    chain: Chain
    index: int
    verdict: str
    """'slower'/'faster' ('worse'/'better' for accuracy), 'stopped finishing', 'no step found' or 'cannot judge'."""
    reason: str = ""
    level: float = math.nan
    """The lookback's level: the median of its runs' medians."""
    change: float = math.nan
    """The point's median over the lookback's level (a difference for accuracy)."""
    baseline: tuple[int, ...] = ()
    test: StepTest | None = None
    q_value: float = math.nan

    @property
    def point(self) -> Point:
        return self.chain.points[self.index]

    @property
    def p_value(self) -> float:
        return self.test.p_value if self.test else math.nan

    @property
    def step(self) -> bool:
        """A change of level: a significant, large enough change (the next point's lookback starts here)."""
        return self.verdict in self.chain.metric.words

    @property
    def regression(self) -> bool:
        return self.verdict in (self.chain.metric.words[1], STOPPED)

    @property
    def loss(self) -> float:
        """The fraction lost (0.51 for a speed that halved), or the accuracy lost in points; 0 for a gain."""
        metric = self.chain.metric
        if not math.isfinite(self.change):
            return math.nan
        if metric.relative:
            lost = 1 - self.change if metric.higher_is_better else self.change - 1
        else:
            lost = -self.change if metric.higher_is_better else self.change
        return max(lost, 0.0)

    @property
    def change_text(self) -> str:
        return self.chain.metric.change_format(self.change) if math.isfinite(self.change) else ""

    @property
    def test_text(self) -> str:
        """'lookback t-test on run means: 3 earlier runs, df 2 (runs' spread)'."""
        if self.test is None:
            return ""
        basis = "runs' spread" if self.test.basis == "runs" else "repeats' spread"
        return f"{TEST_NAME}: {self.test.earlier} earlier runs, df {self.test.df:g} ({basis})"

    @property
    def marks(self) -> list[str]:
        return self.chain.marks(self.index)


@dataclass
class Detection:
    """Every judgement of a history, and where each chain's segments start (the points after a step)."""

    judgements: list[Judgement]
    starts: dict[int, frozenset[int]] = field(default_factory=dict)
    """By ``id(chain)``: the indices that start a segment."""

    def of(self, chain: Chain) -> frozenset[int]:
        return self.starts.get(id(chain), frozenset())


def _lookback(chain: Chain, index: int, starts: frozenset[int]) -> tuple[list[int], int]:
    """The earlier points with values that ``index`` is judged against, and where their segment starts."""
    start = max((s for s in starts if s <= index - 1), default=0)
    earlier = [j for j in range(start, index) if chain.points[j].values.size]
    return earlier[-LOOKBACK:], start


def compare(chain: Chain, index: int, starts: frozenset[int]) -> Judgement:
    """Point ``index`` against its lookback: a test (verdict pending ``decide``), or why there is none."""
    point = chain.points[index]
    if index == 0:
        return Judgement(chain, index, CANNOT, "the first run of its series")
    if point.values.size == 0:
        before = chain.points[index - 1]
        if point.finished == 0 and before.finished:
            return Judgement(chain, index, STOPPED, "no record of this cell ended ok; in the run before, some did")
        why = ("training did not converge in its budget" if point.finished and chain.metric.converged_only
               else "not measured" if point.finished else "the cell did not finish")
        return Judgement(chain, index, CANNOT, f"no value: {why}")
    if point.values.size < MIN_REPEATS:
        return Judgement(chain, index, CANNOT, f"{point.values.size} repeat; needs {MIN_REPEATS} (bench run --repeats)")
    earlier, start = _lookback(chain, index, starts)
    if len(earlier) < MIN_EARLIER:
        since = f" since the step at {chain.points[start].date:%Y-%m-%d %H:%M}" if start else ""
        return Judgement(chain, index, CANNOT, f"{len(earlier)} earlier run(s) with values{since}; needs {MIN_EARLIER}",
                         baseline=tuple(earlier))
    metric = chain.metric
    level = float(np.median([np.median(chain.points[j].values) for j in earlier]))
    now = float(np.median(point.values))
    with np.errstate(divide="ignore", invalid="ignore"):
        change = now / level if metric.relative else now - level
    test = step_test(point.values, [chain.points[j].values for j in earlier], log=metric.relative)
    return Judgement(chain, index, NO_STEP, level=level, change=float(change), baseline=tuple(earlier), test=test)


def decide(judgements: list[Judgement], min_effect: float, alpha: float = SIGNIFICANCE) -> None:
    """Adjust the tested judgements' p-values together (Benjamini-Hochberg) and give each its verdict."""
    tested = [j for j in judgements if j.test is not None]
    for judgement, q_value in zip(tested, benjamini_hochberg(j.test.p_value for j in tested)):
        metric = judgement.chain.metric
        neutral, floor = (1.0, min_effect) if metric.relative else (0.0, ACCURACY_FLOOR)
        judgement.q_value = float(q_value)
        if q_value < alpha and abs(judgement.change - neutral) >= floor:
            improved = (judgement.change > neutral) == metric.higher_is_better
            judgement.verdict, judgement.reason = metric.words[0 if improved else 1], ""
        else:
            judgement.verdict, judgement.reason = NO_STEP, _detectable(judgement, alpha)


def _detectable(judgement: Judgement, alpha: float) -> str:
    """'could tell a change beyond 0.88× or 1.14× from noise' (before correction): how blind 'no step found' is."""
    size = judgement.test.detectable(alpha)
    if judgement.test.standard_error == 0:
        return "every value so far is the same, so any change would show"
    if not math.isfinite(size):
        return "the test has no power here"
    if judgement.chain.metric.relative:
        return f"could tell a change beyond {fmt.ratio(math.exp(-size))} or {fmt.ratio(math.exp(size))} from noise"
    return f"could tell a change beyond ±{fmt.sig(100 * size, 2)} pp from noise"


def judge(chains: list[Chain], min_effect: float = DEFAULT_NOISE_FLOOR, alpha: float = SIGNIFICANCE) -> Detection:
    """Judge every point of every chain, with one correction over all tests.

    A step found at point i starts a new segment (later points' lookbacks begin there), and which
    steps are found depends on the lookbacks, so segments and verdicts are recomputed until they
    agree: starting from unsegmented chains, a step found in one round is a segment start in the next.
    """
    starts: dict[int, frozenset[int]] = {id(chain): frozenset() for chain in chains}
    judgements: list[Judgement] = []
    for _ in range(MAX_ROUNDS):
        judgements = [compare(chain, i, starts[id(chain)]) for chain in chains for i in range(len(chain.points))]
        decide(judgements, min_effect, alpha)
        found = {id(chain): frozenset() for chain in chains}
        for judgement in judgements:
            if judgement.step:
                found[id(judgement.chain)] |= {judgement.index}
        if found == starts:
            break
        starts = found
    return Detection(judgements, starts)
