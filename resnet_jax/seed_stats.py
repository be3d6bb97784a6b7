"""Runs of one net over several seeds, taken together: mean curves with a spread, "best (mean ± std)"
summaries as the paper's Table 6 gives them, and comparisons between nets with a confidence interval.

    python experiments/report.py runs/quick3            # the tables and comparisons
    python experiments/plot_degradation.py runs/quick3  # mean curves with a +-1 std band

A single run is one seed and shows as before. Runs with the same seed see the same data order (the
order is a function of the seed alone), so two nets trained over the same seeds are compared seed by
seed (a paired t-test); otherwise Welch's t-test. The statistics are scipy's. Nothing here imports jax.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from resnet_jax.results import Run

CONFIDENCE = 0.95


@dataclasses.dataclass
class Net:
    """The runs of one net (same architecture, dataset and schedule) over its seeds."""
    runs: list[Run]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def name(self) -> str:
        return self.first.job

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    def values(self, metric: Callable[[Run], float | None]) -> dict:
        """{seed: value} of the runs that have one."""
        return {r.seed: v for r in self.runs if (v := metric(r)) is not None}


def net_key(run: Run) -> tuple:
    return run.job, run.net, run.dataset, run.num_train_steps


def group_by_net(runs: Sequence[Run]) -> list[Net]:
    """Runs of the same net, dataset and number of steps, in the order of Run.sort_key."""
    groups: dict[tuple, list[Run]] = {}
    for run in sorted(runs, key=Run.sort_key):
        groups.setdefault(net_key(run), []).append(run)
    return [Net(sorted(rs, key=lambda r: (r.seed is None, r.seed))) for rs in groups.values()]


def summary(values: Sequence[float]) -> dict | None:
    """n, mean, sample std (ddof=1; 0 for one value), best (the lowest) and the values themselves."""
    if not len(values):
        return None
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "best": float(a.min()), "values": [float(v) for v in a]}


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]):
    """(steps, mean, std) over the steps every curve has (a run still going limits the others)."""
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    table = np.array([[dict(c)[s] for s in common] for c in curves], dtype=float).reshape(len(curves), len(common))
    std = table.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return np.array(common), table.mean(axis=0), std


# ----------------------------------------------------------------------------- comparisons


METRICS = {
    "final training error": lambda r: r.final_train_error,
    "final test error": lambda r: r.final_test_error,
}


@dataclasses.dataclass
class Comparison:
    """Whether net `a` has a higher `metric` than net `b` (a claim of Fig. 6), over seeds."""
    claim: str
    metric: str
    a: str
    b: str
    n: int                      # pairs (paired) or the smaller group (unpaired)
    test: str                   # "paired t" | "Welch t" | "" (too few seeds)
    difference: float | None    # mean(a) - mean(b), error as a fraction
    ci: tuple[float, float] | None
    p_value: float | None       # one-sided: a > b
    holds: bool | None          # the CI lies above 0; None: too few seeds to say

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def compare(a: Net, b: Net, metric: str, claim: str, confidence: float = CONFIDENCE) -> Comparison:
    """Difference of means of `metric` (a - b) with its `confidence` interval over seeds: paired by
    seed where both nets ran the same seeds, else Welch's unequal-variance interval."""
    va, vb = a.values(METRICS[metric]), b.values(METRICS[metric])
    shared = sorted(set(va) & set(vb), key=lambda s: (s is None, s))
    paired = len(shared) >= 2 and set(va) == set(vb)
    base = dict(claim=claim, metric=metric, a=a.name, b=b.name)
    if paired:
        x, y = [va[s] for s in shared], [vb[s] for s in shared]
        t_test, n, test = lambda **kw: stats.ttest_rel(x, y, **kw), len(shared), "paired t"
    elif len(va) >= 2 and len(vb) >= 2:
        x, y = list(va.values()), list(vb.values())
        t_test, n, test = lambda **kw: stats.ttest_ind(x, y, equal_var=False, **kw), min(len(x), len(y)), "Welch t"
    else:
        diff = float(np.mean(list(va.values())) - np.mean(list(vb.values()))) if va and vb else None
        return Comparison(**base, n=min(len(va), len(vb)), test="", difference=diff, ci=None, p_value=None,
                          holds=None)
    low, high = t_test().confidence_interval(confidence)
    return Comparison(**base, n=n, test=test, difference=float(np.mean(x) - np.mean(y)), ci=(float(low), float(high)),
                      p_value=float(t_test(alternative="greater").pvalue), holds=bool(low > 0))


def fig6_comparisons(nets: Sequence[Net]) -> list[Comparison]:
    """The claims of Fig. 6 among the nets present (paper's CIFAR and ImageNet nets with batch norm):
    the deepest plain net trains worse than the shallowest; the deepest ResNet tests better than the
    shallowest; at each depth the plain net trains worse than its ResNet twin."""
    def paper_nets(residual):
        return sorted((n for n in nets if n.first.residual is residual and n.first.is_paper_net),
                      key=lambda n: n.first.depth)
    plain, resnets = paper_nets(False), paper_nets(True)
    out = []
    if len(plain) >= 2:
        deep, shallow = plain[-1], plain[0]
        out.append(compare(deep, shallow, "final training error",
                           f"{deep.name} trains worse than {shallow.name} (degradation)"))
    if len(resnets) >= 2:
        deep, shallow = resnets[-1], resnets[0]
        out.append(compare(shallow, deep, "final test error",
                           f"{deep.name} tests better than {shallow.name} (depth helps a ResNet)"))
    twins = {(n.first.depth, n.first.dataset, n.first.num_train_steps): n for n in resnets}
    for p in plain:
        twin = twins.get((p.first.depth, p.first.dataset, p.first.num_train_steps))
        if twin is not None:
            out.append(compare(p, twin, "final training error",
                               f"{p.name} trains worse than {twin.name} (shortcuts help)"))
    return out
