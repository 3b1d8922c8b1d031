"""Always-valid inference on a Bernoulli rate: Robbins' beta-mixture martingale and the confidence
sequence it gives (Robbins, "Statistical methods related to the law of the iterated logarithm", Ann.
Math. Statist. 41(5), 1970). Exact for Bernoulli trials, with no normal approximation: what the
failed-batch guardrail and the sample ratio test's share interval use.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy


def log_beta_mixture_ratio(successes: Any, n: Any, rate: Any, a: float, b: float) -> Any:
    """log of Robbins' beta-mixture likelihood ratio for Bernoulli trials, vectorised:

        M_n(p) = ∫ q^k (1 - q)^(n - k) Beta(q; a, b) dq / (p^k (1 - p)^(n - k))
               = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k)),

    a nonnegative martingale with mean 1 under rate p, so 1 / M_n(p) is an always-valid p-value of
    H0: rate = p (k = `successes` of n trials)."""
    k, n, p = np.asarray(successes, dtype=float), np.asarray(n, dtype=float), np.asarray(rate, dtype=float)
    with np.errstate(divide="ignore"):
        likelihood = xlogy(k, p) + xlog1py(n - k, -p)
    return betaln(a + k, b + n - k) - betaln(a, b) - likelihood


def rate_interval(successes: int, n: int, alpha: float, a: float, b: float) -> tuple[float, float]:
    """The always-valid (1 - alpha) confidence interval of a Bernoulli rate: the rates p where the
    beta mixture `log_beta_mixture_ratio` stays below log(1 / alpha) (Robbins 1970). It holds at
    every n at once; (0, 1) before any trial."""
    if n == 0:
        return 0.0, 1.0
    k, level = int(successes), math.log(1.0 / alpha)
    centre = k / n

    def excess(p: float) -> float:
        return float(log_beta_mixture_ratio(k, n, p, a, b)) - level

    tiny = 1e-15
    low = 0.0 if k == 0 or excess(tiny) < 0 else brentq(excess, tiny, max(centre, tiny))
    high = 1.0 if k == n or excess(1.0 - tiny) < 0 else brentq(excess, min(centre, 1.0 - tiny), 1.0 - tiny)
    return low, high
