"""The hyperparameters each built-in model family declares: what a spec may set or search under
``training.candidates.<family>.params`` / ``.search``. Any other name is a spec error, so a
misspelling (``max_dept``) never trains silently on the library's default.

Light on purpose (no ML or pandas import): specs are checked against these sets when they load,
at every DAG parse. Each family class points at its set (``Family.parameters``), and the
``flywheel.family_parameters`` entry points name them for the spec loader; a family of another
package registers its own set the same way.
"""

from __future__ import annotations

# scikit-learn's LogisticRegression arguments (the family sets max_iter and random_state).
LOGISTIC_REGRESSION = frozenset({"C", "penalty", "l1_ratio", "class_weight", "solver", "tol", "fit_intercept",
                                 "intercept_scaling"})
# DummyClassifier / DummyRegressor: the strategy is the family's definition; nothing to tune.
MAJORITY: frozenset[str] = frozenset()
MEAN: frozenset[str] = frozenset()
# scikit-learn's Ridge arguments.
LINEAR = frozenset({"alpha", "fit_intercept", "solver", "tol", "max_iter"})
# XGBoost's scikit-learn arguments (the family sets random_state, n_jobs, tree_method, eval_metric).
XGBOOST = frozenset({
    "n_estimators", "max_depth", "max_leaves", "max_bin", "grow_policy", "learning_rate", "objective",
    "booster", "gamma", "min_child_weight", "max_delta_step", "subsample", "sampling_method",
    "colsample_bytree", "colsample_bylevel", "colsample_bynode", "reg_alpha", "reg_lambda",
    "scale_pos_weight", "base_score", "num_parallel_tree", "max_cat_to_onehot", "early_stopping_rounds"})
# The PyTorch MLP's DEFAULTS, and "width" (a searchable shorthand for two layers).
TORCH_MLP = frozenset({"hidden", "dropout", "embedding_dim", "lr", "weight_decay", "epochs", "batch_size",
                       "patience", "pos_weight", "width"})
