"""XGBoost's own prediction call on a dense float32 matrix, without the Python wrapper's work per call.

`Booster.inplace_predict` spends ~110 µs per call in Python around the C call (a JSON configuration,
the array interface, input checks, a class built for the output), however few the rows: on this
2-core machine one row took 197 µs with it and 84 µs through `DenseScorer`, five rows 228 against
107 µs, 500 rows 1,478 against 1,328 µs (one thread). A worker at a steady rate scores a few rows per
batch with three models, so that overhead was most of the predict stage. `DenseScorer` makes the same
call, `XGBoosterPredictFromDense` of XGBoost's public C API (through the library the xgboost package
loaded), with its configuration encoded once: the same function on the same input, so the same
scores, bit for bit (tests/unit/models/test_dense.py).

Each thread hands XGBoost its own proxy DMatrix, made once, instead of none. Given none, XGBoost 3.2
makes a proxy per call, and each new one reads the cgroup CPU quota from /proc and /sys
(`Context::Context`, `GetCfsCPUCount`): py-spy --native put 13.5 % of a one-row call there.
bench/bench_backbone.py (one model, 200 trees of depth 6, medians of interleaved trials): one row
99 µs with a new proxy per call against 83 µs with the thread's own, 21 rows 158 against 141 µs, 500
rows 1,362 against 1,338 µs. What remains per call is XGBoost's: a regex compiled to parse the
proxy's device (~25 %) and every tree's depth walked (~20 %).
"""

from __future__ import annotations

import ctypes
import json
import math
import threading
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xgboost

# Threads per booster: 1. Measured by bench/bench_backbone.py on this 2-core machine (16 features, 200 trees
# of depth 6, two models on the same batch, medians of 7 interleaved trials, machine shared with other
# work): nthread=1 per model with the two models in parallel threads vs nthread=2 one after the other
# took 4.9 vs 5.1 ms, 5.1 vs 5.6 ms and 6.3 vs 6.7 ms for 1,000 rows, and 0.92 vs 1.06 ms for 10 rows;
# in one run while the neighbours were busy, 10.2 vs 48.0 ms (an OpenMP team of 2 stalls when another
# process holds one of the two cores). One thread per model also avoids oversubscription: the golden
# and each experiment already run in their own pool threads.
# The explainer too: its searches predict 15-40k rows per explanation, and an OpenMP team of 2 beside
# the hot path spins for the core the hot path holds. bench/bench_explainer.py (150-round model, rows near the
# decision, medians of 5): with one core busy an explanation took 387 ms of CPU and 394 ms wall with 2
# threads, 217 and 312 ms with one; with the machine as it was, 319 against 212 ms CPU, 272 against 214
# ms wall.
MODEL_NTHREAD = 1
"""XGBoost threads per booster wherever a worker predicts (`booster.set_param({"nthread": ...})`)."""

_CONFIG = {  # what inplace_predict sends, per predict_type ("value": the objective's output)
    predict_type: json.dumps(
        {
            "type": 1 if predict_type == "margin" else 0,
            "training": False,
            "iteration_begin": 0,
            "iteration_end": 0,
            "missing": math.nan,
            "strict_shape": False,
            "cache_id": 0,
        }
    ).encode()
    for predict_type in ("value", "margin")
}


@cache
def _library() -> ctypes.CDLL:
    """libxgboost as the xgboost package found it (loading it again shares the loaded one)."""
    from xgboost.libpath import find_lib_path

    library = ctypes.CDLL(find_lib_path()[0])
    library.XGBGetLastError.restype = ctypes.c_char_p
    return library


def _raise_for(status: int) -> None:
    """XGBoost's message as an XGBoostError when a C call failed (status not 0)."""
    if status != 0:
        from xgboost.core import XGBoostError

        raise XGBoostError(_library().XGBGetLastError().decode())


class _Proxy:
    """A proxy DMatrix (the input holder of in-place prediction), freed with the object."""

    def __init__(self) -> None:
        self.handle = ctypes.c_void_p()
        self._free = _library().XGDMatrixFree  # held: module globals may be gone when this is freed
        _raise_for(_library().XGProxyDMatrixCreate(ctypes.byref(self.handle)))

    def __del__(self) -> None:
        self._free(self.handle)


class _ThreadProxies(threading.local):
    """Each thread's own proxy, shared by every booster it scores with: a thread makes one call at a
    time, and a call sets the proxy's input before reading it. Freed when the thread ends."""

    def __init__(self) -> None:
        self.proxy = _Proxy()


_PROXIES = _ThreadProxies()


class DenseScorer:
    """`inplace_predict` for a 2-D float32 matrix (other float dtypes are cast to float32, as XGBoost
    itself reads them), through XGBoost's C API; the `Model` the backbone calls. Thread-safe as
    `inplace_predict` is: XGBoost keeps each thread's output buffer apart, copied before returning."""

    def __init__(self, booster: xgboost.Booster) -> None:
        self._lib = _library()
        self.booster = booster  # holds the handle alive
        self.features = booster.num_features()

    def inplace_predict(self, data: np.ndarray, predict_type: str = "value") -> np.ndarray:
        """One score per row of `data` (more per row for a multi-output model), float32; with
        `predict_type="margin"` the untransformed margin, as XGBoost's own `inplace_predict` gives it.

        Raises:
            ValueError: `data` is not 2-D with the booster's number of features, or `predict_type` is
                neither "value" nor "margin".
            xgboost.core.XGBoostError: XGBoost refused the call (its message).
        """
        config = _CONFIG.get(predict_type)
        if config is None:
            raise ValueError(f"predict_type must be 'value' or 'margin', got {predict_type!r}")
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.features:
            raise ValueError(f"Feature shape mismatch, expected: {self.features}, got {data.shape}")
        interface = (
            f'{{"data": [{data.ctypes.data}, true], "shape": [{data.shape[0]}, {data.shape[1]}], '
            f'"strides": null, "typestr": "<f4", "version": 3}}'
        ).encode()
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        scores = ctypes.POINTER(ctypes.c_float)()
        _raise_for(
            self._lib.XGBoosterPredictFromDense(
                self.booster.handle,
                interface,
                config,
                _PROXIES.proxy.handle,
                ctypes.byref(shape),
                ctypes.byref(dims),
                ctypes.byref(scores),
            )
        )
        out_shape = tuple(int(shape[i]) for i in range(dims.value))
        if math.prod(out_shape) == 0:
            return np.empty(out_shape, dtype=np.float32)
        # XGBoost's buffer is reused by this thread's next call on the booster: copy it out now.
        return np.ctypeslib.as_array(scores, shape=out_shape).copy()
