"""A LightGBM booster's scores, as the service asks for them: most requests score one row.

`Booster.predict` builds a predictor on every call (its parameters copied and parsed, the input
converted, an OpenMP region entered): about 25 us, whatever the rows, against 7 us for the trees
themselves on one row of a 200-tree model. LightGBM's C API has a path for exactly this case,
`LGBM_BoosterPredictForMatSingleRowFast`: the parameters are parsed once, per booster (the
"fast config"), and each call scores one row of doubles. It gives the same number as
`Booster.predict` (test_serving_predict holds the two to equality, NaN features included); any
other input, and any call the fast path can't vouch for, goes to `Booster.predict`, which also
raises what LightGBM raises.

The Python package has no public handle on the C API: this uses `lightgbm.basic._LIB` (the loaded
library) and `Booster._handle`, both there since LightGBM 3. A version that drops them turns the
fast path off (with a warning), never the scores.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref

import numpy as np

log = logging.getLogger(__name__)

_PREDICT_NORMAL, _FLOAT64 = 0, 1  # C_API_PREDICT_NORMAL, C_API_DTYPE_FLOAT64 (c_api.h)


class _FastRow:
    """One booster's fast config for `num_threads`: one row of doubles in, its score out."""

    def __init__(self, lib, booster, num_threads: int):
        self.lib, self.ncol = lib, booster.num_feature()
        # As Booster.predict picks it by default (num_iteration=None): the best iteration, if any.
        iterations = booster.best_iteration if booster.best_iteration > 0 else -1
        self.handle = ctypes.c_void_p()
        status = lib.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle,
            ctypes.c_int(_PREDICT_NORMAL),
            ctypes.c_int(0),
            ctypes.c_int(iterations),
            ctypes.c_int(_FLOAT64),
            ctypes.c_int32(self.ncol),
            ctypes.c_char_p(f"num_threads={num_threads}".encode()),
            ctypes.byref(self.handle),
        )
        if status != 0:
            raise RuntimeError(lib.LGBM_GetLastError().decode())
        self._free = weakref.finalize(self, lib.LGBM_FastConfigFree, self.handle)

    def __call__(self, row: np.ndarray) -> np.ndarray | None:
        out, n = np.empty(1), ctypes.c_int64()
        status = self.lib.LGBM_BoosterPredictForMatSingleRowFast(
            self.handle,
            row.ctypes.data_as(ctypes.c_void_p),
            ctypes.byref(n),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        return out if status == 0 and n.value == 1 else None


_fast: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # booster -> {num_threads: _FastRow}
_fast_lock = threading.Lock()
_fast_off: list[str] = []  # why the fast path is off in this process (empty: it is on)


def _fast_row(booster, num_threads: int) -> _FastRow | None:
    with _fast_lock:
        if _fast_off:
            return None
        per_threads = _fast.setdefault(booster, {})
        if num_threads not in per_threads:
            try:
                from lightgbm.basic import _LIB

                per_threads[num_threads] = _FastRow(_LIB, booster, num_threads)
            except Exception as e:  # noqa: BLE001 (a LightGBM without this path: the slow one scores)
                _fast_off.append(f"{type(e).__name__}: {e}")
                log.warning("LightGBM's single-row path is off, Booster.predict scores: %s", _fast_off[0])
                return None
        return per_threads[num_threads]


def predict(booster, x: np.ndarray, num_threads: int) -> np.ndarray:
    """`booster.predict(x, num_threads=num_threads)`, one row through LightGBM's single-row path."""
    fast = _fast_row(booster, num_threads) if x.ndim == 2 and x.shape[0] == 1 else None
    # The width the fast config was made for (no call into LightGBM for it on every request).
    if fast is not None and x.shape[1] == fast.ncol:
        got = fast(np.ascontiguousarray(x[0], dtype=np.float64))
        if got is not None:
            return got
    return booster.predict(x, num_threads=num_threads)
