"""Choosing a baseline's features and model by cross-validation on the training rows only.

A modality offers one or more feature variants (a matrix per split plus an unfitted transform such as TF-IDF
weighting, fitted inside every CV fold). `choose` tries every variant with logistic regression over a grid of C
(and, for dense features, gradient boosting) by stratified K-fold CV log-loss on the rows it is given: the
caller hands it train rows only, so nothing about the test split can reach a choice. The scores are those of
GridSearchCV on the whole pipeline, but each variant's transform is fitted once per fold and shared by every
setting, model family and later candidate (`grid_cv_log_loss`, `fold_blocks`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn import clone, config_context
from sklearn.base import TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

CV_FOLDS = 5
# Under SMALL_TRAIN train rows, 3 folds: on the demo (~120 train units) they made the same choices as 5 folds
# at 60 % of the cost, and small sets are where a baseline's fixed cost weighs against a short training.
SMALL_CV_FOLDS, SMALL_TRAIN = 3, 500
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
LR, HGB = "logistic_regression", "hist_gradient_boosting"
GRIDS = {LR: {"model__C": list(C_GRID)}, HGB: {"model__max_depth": [3, None]}}
MODEL_PHRASE = {LR: "logistic regression", HGB: "gradient boosting"}
DEFAULT_PARAMS = {LR: {"C": 1.0}, HGB: {"max_depth": 3}}


@dataclass
class Variant:
    """One way of turning a modality's bags into features: train and test matrices (rows = units) and the
    transform fitted on the rows of each CV fold (and finally on all train rows)."""

    modality: str
    name: str  # short id for the baseline's name, e.g. "kmer5_tfidf"
    phrase: str  # for a reader, e.g. "TF-IDF 5-mer counts"
    settings: dict
    train: np.ndarray | sp.csr_matrix
    test: np.ndarray | sp.csr_matrix
    transform: Callable[[], TransformerMixin]
    dense: bool  # small and dense enough for gradient boosting


@dataclass
class Choice:
    """The chosen features (one variant per modality), model family and its parameters."""

    variants: list[Variant]
    family: str
    params: dict
    cv_folds: int
    cv_log_loss: float | None
    tried: list[str] = field(default_factory=list)  # every setting scored, for the record
    families: list[str] = field(default_factory=list)


def stacked(variants: Sequence[Variant], part: str) -> np.ndarray | sp.csr_matrix:
    """The variants' `part` ("train" or "test") matrices side by side (sparse if any is)."""
    blocks = [getattr(v, part) for v in variants]
    if any(sp.issparse(b) for b in blocks):
        return sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr")
    return np.hstack(blocks)


def to_dense(X):
    """Dense array of a sparse or dense matrix (NaN entries kept)."""
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def make_model(variants: Sequence[Variant], family: str, seed: int, binary: bool = True) -> Pipeline:
    """Per-variant transforms on their own columns, then the classifier (gradient boosting after densifying)."""
    edges = np.cumsum([0] + [v.train.shape[1] for v in variants])
    features = ColumnTransformer([(f"{v.modality}_{v.name}", _block_transform(v), slice(int(lo), int(hi)))
                                  for v, lo, hi in zip(variants, edges[:-1], edges[1:], strict=True)],
                                 sparse_threshold=1.0)
    if family == LR:
        # liblinear is several times faster than lbfgs on few rows with many sparse columns; it is binary only.
        solver = "liblinear" if binary else "lbfgs"
        return Pipeline([("features", features),
                         ("model", LogisticRegression(solver=solver, max_iter=1000, random_state=seed))])
    return Pipeline([("features", features), ("dense", FunctionTransformer(to_dense, accept_sparse=True)),
                     ("model", HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, early_stopping=False,
                                                              random_state=seed))])


def _block_transform(variant: Variant):
    """The variant's transform; a dense block is made dense again first (stacked beside a sparse one, it
    arrives sparse, and imputers and centring scalers need it dense)."""
    if sp.issparse(variant.train):
        return variant.transform()
    return make_pipeline(FunctionTransformer(to_dense, accept_sparse=True), variant.transform())


def cv_folds(y: np.ndarray) -> int:
    """Folds for stratified CV: CV_FOLDS (SMALL_CV_FOLDS under SMALL_TRAIN rows), fewer when a class has fewer
    rows, 0 when one has under two."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        return 0
    wanted = CV_FOLDS if len(y) >= SMALL_TRAIN else SMALL_CV_FOLDS
    return int(min(wanted, counts.min())) if counts.min() >= 2 else 0


def choose(candidates: Sequence[Sequence[Variant]], y: np.ndarray, seed: int, boosting: bool,
           cache: dict | None = None) -> Choice:
    """The candidate (a list of variants used together) and model with the best mean CV log-loss on (X, y).

    Ties go to the earlier candidate and setting. Without enough rows for CV, the first candidate with
    logistic regression at C=1. `cache` (a dict, shared by calls on the same rows and `y`) keeps each
    variant's per-fold transforms for later calls.
    """
    cache = {} if cache is None else cache
    families = [LR, HGB] if boosting else [LR]
    folds = cv_folds(y)
    if folds == 0:
        return Choice(list(candidates[0]), LR, dict(DEFAULT_PARAMS[LR]), 0, None, [], families)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y))
    best, tried = None, []
    for variants in candidates:
        for family in families:
            grid = [dict(zip(GRIDS[family], values, strict=True)) for values in itertools.product(*GRIDS[family].values())]
            losses = grid_cv_log_loss(variants, family, grid, y, splits, seed, cache)
            for params, loss in zip(grid, losses, strict=True):
                tried.append(f"{'+'.join(v.name for v in variants)} {family} {_params(params)} log-loss {loss:.4f}")
            at = int(np.argmin(losses))  # the first of equal losses, as GridSearchCV's rank does
            if best is None or losses[at] < best.cv_log_loss - 1e-12:
                best = Choice(list(variants), family, _params(grid[at]), folds, float(losses[at]))
    best.tried, best.families = tried, families
    return best


def grid_cv_log_loss(variants: Sequence[Variant], family: str, grid: Sequence[dict], y: np.ndarray,
                     splits: Sequence[tuple[np.ndarray, np.ndarray]], seed: int,
                     cache: dict | None = None) -> np.ndarray:
    """Mean validation log-loss over `splits` of `make_model(variants, family)` at each `grid` setting: the
    figures GridSearchCV gives for that pipeline, at a fraction of its cost. No feature step has a grid
    parameter, so each variant's transform (TF-IDF, imputation, scaling) is fitted once per fold and its
    output shared by every setting, both model families and, through `cache`, every later candidate that
    uses the variant with the same splits; only the classifier is refitted per setting."""
    cache = {} if cache is None else cache
    blocks = [fold_blocks(v, y, splits, cache) for v in variants]
    model = make_model(variants, family, seed, len(np.unique(y)) == 2)[-1]
    losses = np.zeros((len(grid), len(splits)))
    with config_context(skip_parameter_validation=True):  # checks cost more than a small fit
        for f, (fit_rows, val_rows) in enumerate(splits):
            X_fit, X_val = joined([b[f][0] for b in blocks], [b[f][1] for b in blocks])
            if family == HGB:
                X_fit, X_val = to_dense(X_fit), to_dense(X_val)
            for g, params in enumerate(grid):
                fitted = clone(model).set_params(**_params(params)).fit(X_fit, y[fit_rows])
                losses[g, f] = log_loss(y[val_rows], fitted.predict_proba(X_val), labels=fitted.classes_)
    return losses.mean(axis=1)


def fold_blocks(variant: Variant, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                cache: dict) -> list[tuple]:
    """Per fold, the variant's transform fitted on the fold's training rows: (its output on them, on the
    validation rows). Kept in `cache` under the variant, the labels and the splits, so it is fitted once per fold."""
    key = (id(variant), hash(np.asarray(y).tobytes()), tuple(hash(val.tobytes()) for _, val in splits))
    if key not in cache:
        out = []
        with config_context(skip_parameter_validation=True):
            for fit_rows, val_rows in splits:
                transform = _block_transform(variant)
                out.append((transform.fit_transform(variant.train[fit_rows], y[fit_rows]),
                            transform.transform(variant.train[val_rows])))
        cache[key] = (variant, out)  # the variant is held so that its id is not reused while cached
    return cache[key][1]


def joined(fit_blocks: Sequence, val_blocks: Sequence) -> tuple:
    """Blocks side by side as make_model's ColumnTransformer (sparse_threshold=1) joins them: sparse when
    any block is sparse and the whole, on the fitted rows, is not fully dense; dense otherwise."""
    sparse = any(sp.issparse(b) for b in fit_blocks)
    if sparse:
        nnz = sum(b.nnz if sp.issparse(b) else b.size for b in fit_blocks)
        sparse = nnz < sum(b.shape[0] * b.shape[1] for b in fit_blocks)
    if sparse:
        return tuple(sp.hstack([sp.csr_matrix(b) for b in blocks]).tocsr() for blocks in (fit_blocks, val_blocks))
    return tuple(np.hstack([to_dense(b) for b in blocks]) for blocks in (fit_blocks, val_blocks))


def _params(grid_params: dict) -> dict:
    return {key.removeprefix("model__"): value for key, value in grid_params.items()}


def fit_predict(choice: Choice, y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Test-row class probabilities (n_test, n_classes) of the chosen model refitted on every train row."""
    model = make_model(choice.variants, choice.family, seed, len(np.unique(y)) == 2).set_params(
        **{f"model__{k}": v for k, v in choice.params.items()})
    model.fit(stacked(choice.variants, "train"), y)
    test = stacked(choice.variants, "test")
    prob = np.zeros((test.shape[0], n_classes))
    prob[:, model.classes_] = model.predict_proba(test)
    return prob


def describe(choice: Choice) -> str:
    """One sentence: "TF-IDF word 1-2-grams + logistic regression (C=10), chosen by 5-fold CV on train ..."."""
    features = " + ".join(v.phrase for v in choice.variants)
    params = ", ".join(f"{k.replace('_', ' ')}={_fmt(v)}" for k, v in choice.params.items())
    model = f"{features} + {MODEL_PHRASE[choice.family]} ({params})"
    if not choice.cv_folds:
        return f"{model}, default setting: too few train rows per class for cross-validation"
    others = [MODEL_PHRASE[f] for f in choice.families if f != choice.family]
    over = f" over {' and '.join(others)}" if others else ""
    return f"{model}, chosen{over} by {choice.cv_folds}-fold CV on train among {len(choice.tried)} settings"


def _fmt(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
