"""Statistics for claim tables: mean ± 95 % CI over seeds, paired and Welch differences,
ratios, and a verdict per claim (issue 19, item 5).

Everything runs on the host in float64 with the standard library and numpy (scipy is a
test-only dependency here; the Student-t quantile is computed from the regularised
incomplete beta function and checked against ``scipy.stats.t.ppf`` in the tests).

Seeds: pass per-seed values as a mapping ``{seed: value}`` so two arms are paired by the
seeds they share (``difference``), or as sequences already aligned by seed
(``paired_difference``).  Arms that share no seed list are compared with Welch's
unpaired interval (``welch_difference``).

Verdict rule (``verdict``), for a claim "quantity ≥ threshold" (or "≤"), with the two-sided
CI [low, high] of the measured quantity:

- ``reproduced``: the whole CI supports the claim (low ≥ threshold; for "≤": high ≤ threshold);
- ``not reproduced``: the whole CI contradicts it (high < threshold; for "≤": low > threshold);
- ``inconclusive``: otherwise, and always with fewer than 2 seeds (no CI) or a NaN.

An ``exact`` claim is about a quantity without sampling noise (a parameter count of a fixed
architecture): its value decides directly, from one seed on, provided every seed gave the
same value (otherwise it is not exact and the rule above applies).

The effect size reported is the point estimate of the quantity (a difference in the
values' unit, or a ratio), its margin over the threshold, and for values and differences
the standardised margin = margin / sd (Cohen's d_z for a paired "A − B ≥ 0").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence, Union

import numpy as np

Values = Union[Sequence[float], Mapping[object, float]]

QUANTITIES = ("value", "difference", "ratio")
DIRECTIONS = (">=", "<=")
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


# --- Student's t quantile ----------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, NR §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (``scipy.stats.t.ppf(p, df)``), by bisection on ``t_cdf``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got p={p}.")
    if not df > 0 or math.isnan(df):
        raise ValueError(f"t_quantile needs df > 0 degrees of freedom, got {df}; use at least 2 seeds.")
    if p == 0.5:
        return 0.0
    target, sign = (p, 1.0) if p > 0.5 else (1.0 - p, -1.0)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < target:  # Bracket: heavy tails at df = 1 need t ≈ 12.7 for 97.5 %.
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < target:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return sign * 0.5 * (low + high)


# --- Estimates ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its two-sided CI; ``low``/``high`` are NaN with n < 2."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan  # per-seed standard deviation (of the values or of the differences)
    df: float = math.nan
    method: str = "t"  # "t", "paired", "welch", "ratio-paired", "ratio-delta"
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def as_dict(self) -> dict:
        """JSON-ready: NaN (no CI with one seed) becomes None, which JSON can hold."""
        return json_ready(dataclasses.asdict(self) | {"half_width": self.half_width})


def json_ready(obj):
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def _as_array(name: str, values) -> np.ndarray:
    if isinstance(values, Mapping):
        values = list(values.values())
    array = np.asarray(values, np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat list of per-seed values, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass one value per seed.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} contains {array[bad[0]]} at index {bad[0]}; pass finite per-seed values.")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95, got {confidence}.")


def _t_interval(mean: float, se: float, df: float, n: int, sd: float, method: str,
                confidence: float) -> Estimate:
    if n < 2 or not df > 0:
        return Estimate(mean, math.nan, math.nan, n, sd, df, method, confidence)
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Estimate(mean, mean - half, mean + half, n, sd, df, method, confidence)


def mean_ci(values: Values, confidence: float = 0.95) -> Estimate:
    """Mean over seeds with the Student-t interval mean ± t_{n−1} · sd / √n."""
    _check_confidence(confidence)
    x = _as_array("values", values)
    n = x.size
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    return _t_interval(float(x.mean()), sd / math.sqrt(n) if n > 1 else math.nan, n - 1, n, sd, "t", confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """a − b over seeds shared by both arms (a[i] and b[i] come from the same seed)."""
    x, y = _as_array("a", a), _as_array("b", b)
    if x.shape != y.shape:
        raise ValueError(f"paired_difference needs one value per shared seed in each arm, got "
                         f"{x.size} and {y.size}; pass the seeds both arms ran, or use welch_difference.")
    return dataclasses.replace(mean_ci(x - y, confidence), method="paired")


def welch_difference(a: Values, b: Values, confidence: float = 0.95) -> Estimate:
    """a − b for arms that do not share seeds: Welch's t interval (Welch–Satterthwaite df)."""
    _check_confidence(confidence)
    x, y = _as_array("a", a), _as_array("b", b)
    mean = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Estimate(mean, math.nan, math.nan, min(x.size, y.size), math.nan, math.nan, "welch", confidence)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Estimate(mean, mean, mean, min(x.size, y.size), 0.0, math.inf, "welch", confidence)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    pooled_sd = math.sqrt(0.5 * (x.var(ddof=1) + y.var(ddof=1)))
    return _t_interval(mean, se, df, min(x.size, y.size), pooled_sd, "welch", confidence)


def _shared_seeds(a: Mapping, b: Mapping) -> list:
    return [s for s in a if s in b]


def difference(a: Values, b: Values, confidence: float = 0.95) -> Estimate:
    """a − b: paired over the shared seeds when both are ``{seed: value}`` mappings with the
    same seeds; Welch when either is a sequence or their seeds differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping) and set(a) == set(b):
        seeds = _shared_seeds(a, b)
        return paired_difference([a[s] for s in seeds], [b[s] for s in seeds], confidence)
    return welch_difference(a, b, confidence)


def ratio(a: Values, b: Values | float, confidence: float = 0.95) -> Estimate:
    """a / b (e.g. the student's accuracy over the teacher's).

    Paired (same seeds in two mappings, or a scalar b such as one teacher): the t interval
    of the per-seed ratios.  Unpaired: the ratio of means with a delta-method interval.
    """
    _check_confidence(confidence)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        b_value = float(b)
        if not math.isfinite(b_value) or b_value == 0.0:
            raise ValueError(f"ratio needs a finite, non-zero denominator, got b={b}.")
        x = _as_array("a", a)
        return dataclasses.replace(mean_ci(x / b_value, confidence), method="ratio-paired")
    paired = isinstance(a, Mapping) and isinstance(b, Mapping) and set(a) == set(b)
    if paired:
        seeds = _shared_seeds(a, b)
        x, y = _as_array("a", [a[s] for s in seeds]), _as_array("b", [b[s] for s in seeds])
    else:
        x, y = _as_array("a", a), _as_array("b", b)
    if np.any(y == 0.0):
        raise ValueError(f"ratio's denominator b is 0 at index {int(np.flatnonzero(y == 0)[0])}; "
                         f"pass non-zero values (a ratio to 0 is undefined).")
    if paired:
        return dataclasses.replace(mean_ci(x / y, confidence), method="ratio-paired")
    r = float(x.mean() / y.mean())
    if x.size < 2 or y.size < 2:
        return Estimate(r, math.nan, math.nan, min(x.size, y.size), math.nan, math.nan, "ratio-delta", confidence)
    va = x.var(ddof=1) / (x.size * x.mean() ** 2) if x.mean() else 0.0
    vb = y.var(ddof=1) / (y.size * y.mean() ** 2)
    se = abs(r) * math.sqrt(va + vb)
    if se == 0.0:
        return Estimate(r, r, r, min(x.size, y.size), 0.0, math.inf, "ratio-delta", confidence)
    df = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    return _t_interval(r, se, df, min(x.size, y.size), math.nan, "ratio-delta", confidence)


# --- Claims and verdicts -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of a paper, as a test: ``quantity direction threshold``.

    Examples (SPEC §3.5, §4.4), with accuracies in percent::

        Claim("L-TOSC-KD beats L-TOSC at 0 dB", "difference", ">=", 0.0, paper_value=1.3, unit="points")
        Claim("RKD-SC keeps ≥ 95.86 % of the teacher at 25 dB", "ratio", ">=", 0.9586, paper_value=0.9586)
        Claim("KDL-DARTS cells are smaller than DARTS's", "ratio", "<=", 1.0, paper_value=...)

    ``paper_value`` is what the paper reports (shown in the table); ``threshold`` is what
    the measured CI is tested against.  Claim "A beats B by ≥ x points" with threshold x;
    "A beats B" with threshold 0.
    """

    name: str
    quantity: str = "difference"
    direction: str = ">="
    threshold: float = 0.0
    paper_value: float | str | None = None
    unit: str = ""
    protocol: str = ""
    exact: bool = False  # No sampling noise: one value decides (see the module docstring).

    def __post_init__(self):
        if self.quantity not in QUANTITIES:
            raise ValueError(f"Claim {self.name!r}: quantity must be one of {QUANTITIES}, got {self.quantity!r}.")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Claim {self.name!r}: direction must be one of {DIRECTIONS} "
                             f"(the claimed side of the threshold), got {self.direction!r}.")
        if not math.isfinite(self.threshold):
            raise ValueError(f"Claim {self.name!r}: threshold must be finite, got {self.threshold}.")

    def describe(self) -> str:
        what = {"value": "value", "difference": "A − B", "ratio": "A / B"}[self.quantity]
        unit = f" {self.unit}" if self.unit else ""
        return f"{what} {self.direction.replace('>=', '≥').replace('<=', '≤')} {self.threshold:g}{unit}"


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    estimate: Estimate
    margin: float  # effect − threshold, signed so that > 0 supports the claim
    standardized: float  # margin / sd (for "A − B ≥ 0": Cohen's d_z); NaN for ratios or sd = 0

    @property
    def effect(self) -> float:
        return self.estimate.mean

    def as_dict(self) -> dict:
        return json_ready({"claim": dataclasses.asdict(self.claim), "verdict": self.verdict,
                           "estimate": self.estimate.as_dict(), "effect": self.effect, "margin": self.margin,
                           "standardized_effect": self.standardized})


def verdict(claim: Claim, estimate: Estimate) -> Verdict:
    """reproduced / not reproduced / inconclusive by the rule of the module docstring."""
    sign = 1.0 if claim.direction == ">=" else -1.0
    margin = sign * (estimate.mean - claim.threshold)
    standardized = (margin / estimate.sd if claim.quantity != "ratio" and estimate.sd
                    and math.isfinite(estimate.sd) else math.nan)
    exact = claim.exact and math.isfinite(estimate.mean) and (estimate.n == 1 or estimate.sd == 0)
    if exact:
        result = REPRODUCED if margin >= 0 else NOT_REPRODUCED
    elif not estimate.has_ci or math.isnan(estimate.mean):
        result = INCONCLUSIVE
    else:
        supports_low, supports_high = sign * (estimate.low - claim.threshold), sign * (estimate.high - claim.threshold)
        worst, best = min(supports_low, supports_high), max(supports_low, supports_high)
        result = REPRODUCED if worst >= 0 else NOT_REPRODUCED if best < 0 else INCONCLUSIVE
    return Verdict(claim, result, estimate, margin, standardized)


def evaluate_claim(claim: Claim, a: Values, b: Values | float | None = None, confidence: float = 0.95) -> Verdict:
    """Estimate the claim's quantity from per-seed values and give its verdict.

    ``value``: a alone; ``difference``: a − b (paired when both are ``{seed: value}`` with
    the same seeds, else Welch); ``ratio``: a / b (b may be one number, e.g. one teacher).
    """
    if claim.quantity == "value":
        if b is not None:
            raise ValueError(f"Claim {claim.name!r} is about one value; pass b=None or use quantity='difference'.")
        estimate = mean_ci(a, confidence)
    elif b is None:
        raise ValueError(f"Claim {claim.name!r} compares two arms ({claim.quantity}); pass the second arm as b.")
    elif claim.quantity == "difference":
        estimate = difference(a, b, confidence)
    else:
        estimate = ratio(a, b, confidence)
    return verdict(claim, estimate)


# --- Tables ------------------------------------------------------------------------------


CLAIM_TABLE_HEADERS = ("claim", "paper", "measured (95 % CI)", "test", "verdict", "seeds", "protocol")


def format_estimate(estimate: Estimate, digits: int = 2, scale: float = 1.0) -> str:
    """'1.23 ± 0.45 [0.78, 1.68]' (``scale`` e.g. 100 for fractions shown in percent)."""
    mean = estimate.mean * scale
    if not estimate.has_ci:
        return f"{mean:.{digits}f} (n={estimate.n}, no CI)"
    return (f"{mean:.{digits}f} ± {estimate.half_width * scale:.{digits}f} "
            f"[{estimate.low * scale:.{digits}f}, {estimate.high * scale:.{digits}f}]")


def claim_row(v: Verdict, digits: int = 2, scale: float = 1.0) -> str:
    """One markdown row of the claim table (headers: ``claim_table_header()``)."""
    paper = v.claim.paper_value
    paper = "—" if paper is None else f"{paper:g}" if isinstance(paper, (int, float)) else str(paper)
    unit = f" {v.claim.unit}" if v.claim.unit else ""
    measured = (f"{v.estimate.mean * scale:.{digits}f} (exact)" if v.claim.exact and not v.estimate.has_ci
                else format_estimate(v.estimate, digits, scale))
    cells = [v.claim.name, paper + unit, measured + unit, v.claim.describe(),
             f"**{v.verdict}**", str(v.estimate.n), v.claim.protocol or "—"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def claim_table_header() -> str:
    return "| " + " | ".join(CLAIM_TABLE_HEADERS) + " |\n|" + "---|" * len(CLAIM_TABLE_HEADERS)


def claim_table(verdicts: Sequence[Verdict], digits: int = 2) -> str:
    return "\n".join([claim_table_header(), *(claim_row(v, digits) for v in verdicts)])
