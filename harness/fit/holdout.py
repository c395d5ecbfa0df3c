"""Held-out prediction: a law fitted on all but the largest scales predicts them; every applicable law compared so."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.fit.data_constrained import fit_data_constrained, single_epoch_points
from harness.fit.kaplan import fit_kaplan_nd
from harness.fit.parametric import fit_parametric
from harness.fit.points import FitError


# The law forms a table of runs can be fitted with, and the columns each reads: a form's fit takes those columns
# and the loss (and intervals=, seed=), and its predict the same columns (and interval=).
LAW_FORMS = {
    "chinchilla": (fit_parametric, ("N", "D")),
    "tied": (functools.partial(fit_parametric, tie_exponents=True), ("N", "D")),
    "kaplan": (fit_kaplan_nd, ("N", "D")),
    "data_constrained": (fit_data_constrained, ("N", "D", "U")),
}
LAW_NAMES = {"chinchilla": "E + A/N^alpha + B/D^beta", "tied": "E + A/N^alpha + B/D^alpha (tied exponents)",
             "kaplan": "Kaplan's [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
             "data_constrained": "Muennighoff et al.'s data-constrained law"}


@dataclass
class Holdout:
    law: str
    by: str
    fit: object                 # the law fitted on the points kept
    points: pd.DataFrame        # the held-out points: their columns, loss, predicted, low, high, error, inside
    n_fitted: int

    @property
    def mean_abs_error(self) -> float:
        """Mean |predicted / measured - 1| over the held-out points."""
        return float(self.points["error"].abs().mean())

    @property
    def coverage(self) -> float:
        """The share of held-out losses inside their predicted intervals (NaN without intervals)."""
        return float(self.points["inside"].astype(float).mean())


def holdout(frame: pd.DataFrame, law: str = "chinchilla", *, by: str = "N", largest: int = 1, interval: float = 0.95,
            intervals: int = 200, seed: int = 0, init=None) -> Holdout:
    """Fit `law` (LAW_FORMS) on every point but those at the `largest` largest values of column `by` (of the rows the
    law is fitted on: fitted_rows), predict those, and compare: per held-out point the prediction, its `interval`
    from `intervals` bootstrap resamples, the relative error predicted / measured - 1 and whether the measured loss
    lies inside the interval (with intervals=0: no interval, and `inside` is NaN). `init`: the law's fit of every
    point, where the fit takes one, to start from (each law's fit says how it uses it)."""
    if law not in LAW_FORMS:
        raise FitError(f"law={law!r} is not one of {', '.join(LAW_FORMS)}")
    fit_fn, columns = LAW_FORMS[law]
    missing = [c for c in (*columns, "loss", by) if c not in frame.columns]
    if missing:
        raise FitError(f"{law} needs the columns {', '.join(missing)}, which the table lacks")
    frame = fitted_rows(frame, law)
    scales = np.sort(frame[by].unique())
    if len(scales) <= largest + 1:
        raise FitError(f"{by} takes {len(scales)} values: holding out the largest {largest} leaves too few scales to fit")
    held = frame[by] >= scales[-largest]
    train, test = frame[~held], frame[held]
    fit = fit_fn(*(train[c].to_numpy(float) for c in columns), train["loss"].to_numpy(float), intervals=intervals,
                 seed=seed, **({"init": init} if init is not None else {}))
    at = [test[c].to_numpy(float) for c in columns]
    predicted, low, high = (fit.predict(*at, interval=interval) if intervals else
                            (fit.predict(*at), np.full(len(test), np.nan), np.full(len(test), np.nan)))
    loss = test["loss"].to_numpy(float)
    points = test[[*dict.fromkeys([*columns, by])]].assign(
        loss=loss, predicted=predicted, low=low, high=high, error=predicted / loss - 1,
        inside=((low <= loss) & (loss <= high)) if intervals else np.nan).reset_index(drop=True)
    return Holdout(law=law, by=by, fit=fit, points=points, n_fitted=len(train))


def single_epoch(frame: pd.DataFrame) -> pd.Series:
    """The rows that saw no token twice (D <= U); every row when the table has no U."""
    return pd.Series(single_epoch_points(frame["D"], frame["U"]) if "U" in frame else True, index=frame.index)


def fitted_rows(frame: pd.DataFrame, law: str) -> pd.DataFrame:
    """The rows `law` is fitted on: a form without U treats every token as fresh, so where the table says how many
    were unique it sees only the single-epoch rows (Muennighoff et al. 2023 fit their base law so); a form with U
    sees every row."""
    return frame if "U" in LAW_FORMS[law][1] else frame[single_epoch(frame)]


def applicable_laws(frame: pd.DataFrame) -> dict[str, str]:
    """{law: why it cannot be fitted to this table} for the forms that cannot ("" for those that can)."""
    why = {}
    for law, (_, columns) in LAW_FORMS.items():
        missing = [c for c in columns if c not in frame.columns or frame[c].isna().any()]
        if missing:
            why[law] = f"no {', '.join(missing)} column"
        elif law == "data_constrained" and single_epoch(frame).all():
            why[law] = "no run saw a token twice (D <= U everywhere)"
        else:
            why[law] = ""
    return why


def compare_laws(frame: pd.DataFrame, *, by: str = "N", largest: int = 1, intervals: int = 200,
                 seed: int = 0, inits: dict | None = None) -> pd.DataFrame:
    """Every applicable law form (LAW_FORMS) held out on the same points (see holdout), ranked by mean absolute
    relative error of the held-out predictions, best first: law, held_out (points), fitted (points), mean and max
    |error|, coverage of the 95% intervals, whether the fit is identified, and why a form could not be compared or
    is not identified (its numbers then move with the last bits of the arithmetic). `inits`: {law: its fit of every
    point} to start each held-out fit from (the work of fitting them shared), where the form takes one."""
    rows = []
    for law, why in applicable_laws(frame).items():
        row = {"law": law, "form": LAW_NAMES[law]}
        if why:
            rows.append({**row, "why": why})
            continue
        try:
            result = holdout(frame, law, by=by, largest=largest, intervals=intervals, seed=seed,
                             init=(inits or {}).get(law))
        except FitError as error:
            rows.append({**row, "why": str(error)})
            continue
        rows.append({**row, "held_out": len(result.points), "fitted": result.n_fitted,
                     "mean_abs_error": result.mean_abs_error, "max_abs_error": float(result.points["error"].abs().max()),
                     "coverage": result.coverage, "identified": result.fit.identified,
                     "why": "" if result.fit.identified else f"not identified: {result.fit.unidentified}"})
    table = pd.DataFrame(rows)
    if "mean_abs_error" not in table:
        table["mean_abs_error"] = np.nan
    return table.sort_values("mean_abs_error", na_position="last", kind="stable").reset_index(drop=True)
