"""Choosing a baseline's features and model by cross-validation on the training rows only.

A modality offers one or more feature variants (a matrix per split plus an unfitted transform such as TF-IDF
weighting, fitted inside every CV fold). `choose` tries every variant with logistic regression over a grid of C
(and, for dense features, gradient boosting) by stratified K-fold CV log-loss on the rows it is given: the
caller hands it train rows only, so nothing about the test split can reach a choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn import config_context
from sklearn.base import TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

CV_FOLDS = 5
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
    """Folds for stratified CV: CV_FOLDS, fewer when a class has fewer rows, 0 when one has under two."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    if len(counts) < 2:
        return 0
    return int(min(CV_FOLDS, counts.min())) if counts.min() >= 2 else 0


def choose(candidates: Sequence[Sequence[Variant]], y: np.ndarray, seed: int, boosting: bool) -> Choice:
    """The candidate (a list of variants used together) and model with the best mean CV log-loss on (X, y).

    Ties go to the earlier candidate and setting. Without enough rows for CV, the first candidate with
    logistic regression at C=1.
    """
    families = [LR, HGB] if boosting else [LR]
    folds = cv_folds(y)
    if folds == 0:
        return Choice(list(candidates[0]), LR, dict(DEFAULT_PARAMS[LR]), 0, None, [], families)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    best, tried = None, []
    for variants in candidates:
        X = stacked(variants, "train")
        for family in families:
            search = GridSearchCV(make_model(variants, family, seed, len(np.unique(y)) == 2), GRIDS[family], scoring="neg_log_loss",
                                  cv=splitter, refit=False, error_score="raise")
            with config_context(skip_parameter_validation=True):  # checks cost more than a small fit
                search.fit(X, y)
            for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                                     strict=True):
                tried.append(f"{'+'.join(v.name for v in variants)} {family} {_params(params)} "
                             f"log-loss {-score:.4f}")
            if best is None or search.best_score_ > best.cv_log_loss + 1e-12:
                best = Choice(list(variants), family, _params(search.best_params_), folds, search.best_score_)
    best.cv_log_loss = -best.cv_log_loss
    best.tried, best.families = tried, families
    return best


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
