"""What every fit checks of the points it is given, and the one error a fit raises."""
import numpy as np


class FitError(ValueError):
    pass


def positive_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise FitError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise FitError(f"{name} holds NaN or infinite values")
    if np.any(array <= 0):
        raise FitError(f"{name} must be positive; got {array[array <= 0][0]:g}")
    return array


def check_points(arrays: dict, n_params: int) -> list[np.ndarray]:
    checked = [positive_array(v, name) for name, v in arrays.items()]
    if len({len(v) for v in checked}) != 1:
        raise FitError(f"{', '.join(arrays)} differ in length ({', '.join(str(len(v)) for v in checked)})")
    if len(checked[0]) <= n_params:
        raise FitError(f"{len(checked[0])} points cannot fit {n_params} parameters (need at least {n_params + 1})")
    return checked
