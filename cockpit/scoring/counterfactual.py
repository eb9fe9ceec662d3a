"""Tree outputs of deals with one reason group set to its typical values, predicting only what changes.

A reason's points are the difference between a deal's score and the score of the same deal with one
group of features (days in stage, close-date pushes, ...) replaced by a typical deal's values
(`ScoringModel._explain`). Changing a group can only change a tree's output where the deal's path
through that tree passes a node that splits on a feature of the group: everywhere else the changed
deal reaches the same leaf. So each tree is first run once to find every deal's leaf, and a tree is
run again on a changed deal only when the path to its leaf crosses the group. On the demo model that
is 7 million tree evaluations instead of 19 million for 100,000 deals.

The sums are formed exactly as predicting every tree on every changed deal would form them (same
values, same order of additions), so the points and the reasons they rank are bit-for-bit the same.
A linear model's contributions are additive already: `explain` reads them off its weight table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cockpit.scoring.estimators import MISSING, LinearModel, TreeModel, n_threads


@dataclass
class TreePaths:
    """For each tree: a predictor that returns the leaf's node index, the leaves' output values, and
    which groups the path to each node crosses."""

    leaf_predictors: list
    values: list[np.ndarray]
    crosses: list[np.ndarray]
    """Per tree, (nodes x groups): True where the path from the root to the node splits on the group."""
    uses: np.ndarray
    """(groups x trees): True where the tree splits on the group anywhere."""

    @classmethod
    def of(cls, est: TreeModel, groups: list[np.ndarray]) -> TreePaths:
        predictors = est.predictors()  # first: it prepares scikit-learn's import (thread waits)
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        group_of = np.full(len(est.thresholds), -1, dtype=np.int64)
        for g, cols in enumerate(groups):
            group_of[cols] = g
        leaf_predictors, values, crosses = [], [], []
        for pred in predictors:
            nodes = pred.nodes
            numbered = nodes.copy()
            numbered["value"] = np.arange(len(nodes), dtype=np.float64)
            leaf_predictors.append(
                TreePredictor(numbered, pred.binned_left_cat_bitsets, pred.raw_left_cat_bitsets)
            )
            values.append(np.ascontiguousarray(nodes["value"], dtype=np.float64))
            cross = np.zeros((len(nodes), len(groups)), dtype=bool)
            stack = [0]
            while stack:  # parents come before their children
                i = stack.pop()
                if nodes["is_leaf"][i]:
                    continue
                below = cross[i].copy()
                g = group_of[int(nodes["feature_idx"][i])]
                if g >= 0:
                    below[g] = True
                for child in (int(nodes["left"][i]), int(nodes["right"][i])):
                    cross[child] = below
                    stack.append(child)
            crosses.append(cross)
        return cls(leaf_predictors, values, crosses, est._group_trees(groups))


@dataclass
class Evaluated:
    """Every tree run once on the rows of a binned matrix."""

    leaf: list[np.ndarray]
    """Per tree, each row's leaf (node index)."""
    out: list[np.ndarray]
    """Per tree, each row's output (the leaf's value)."""
    total: np.ndarray
    """Log-odds of each row: the baseline plus every tree's output, added in tree order."""
    per_group: np.ndarray
    """(groups x rows): the summed output of the trees that use the group (`TreeModel.raw_by_group`)."""


def evaluate(est: TreeModel, paths: TreePaths, B: np.ndarray) -> Evaluated:
    """Run every tree once on `B`, keeping each row's leaf."""
    threads = n_threads()
    n = len(B)
    leaf, out = [], []
    total = np.full(n, est.baseline)
    per_group = np.zeros((len(paths.uses), n))
    for t, (predictor, values) in enumerate(zip(paths.leaf_predictors, paths.values, strict=True)):
        where = predictor.predict_binned(B, MISSING, threads).astype(np.intp)
        tree_out = values[where]
        leaf.append(where)
        out.append(tree_out)
        total += tree_out
        for g in np.flatnonzero(paths.uses[:, t]):
            per_group[g] += tree_out
    return Evaluated(leaf, out, total, per_group)


def group_raw(
    est: TreeModel,
    paths: TreePaths,
    done: Evaluated,
    g: int,
    cols: np.ndarray,
    rows: np.ndarray,
    B: np.ndarray,
    typical: np.ndarray,
) -> np.ndarray:
    """Summed output of the trees that use group `g` (columns `cols`) on rows `rows` of `B` with those
    columns set to `typical`'s (`TreeModel.group_raw` of the changed rows), re-running a tree only on the rows
    whose path crosses the group."""
    preds = est.predictors()
    threads = n_threads()
    changed = B.copy()
    changed[:, cols] = typical[:, cols]
    wanted = np.zeros(len(B), dtype=bool)
    wanted[rows] = True
    out = np.zeros(len(B))
    for t in np.flatnonzero(paths.uses[g]):
        tree_out = done.out[t].copy()
        again = np.flatnonzero(wanted & paths.crosses[t][:, g][done.leaf[t]])
        if len(again):
            tree_out[again] = preds[t].predict_binned(changed[again], MISSING, threads)
        out += tree_out
    return out[rows]


@dataclass
class Explanation:
    """A model's log-odds on binned rows, split by reason group, and what a group's trees (or
    weights) give once that group is set to typical values."""

    est: TreeModel | LinearModel
    groups: list[np.ndarray]
    B: np.ndarray
    total: np.ndarray
    """Log-odds of each row."""
    per_group: np.ndarray
    """(groups x rows): the part of `total` that group `g` can change."""
    paths: TreePaths | None = None
    done: Evaluated | None = None

    def changed(self, g: int, rows: np.ndarray, typical: np.ndarray) -> np.ndarray:
        """`per_group[g, rows]` as it would be with group `g`'s columns of `rows` set to `typical`'s."""
        cols = self.groups[g]
        if self.paths is not None and self.done is not None:
            return group_raw(self.est, self.paths, self.done, g, cols, rows, self.B, typical)
        B_typical = self.B[rows]
        B_typical[:, cols] = typical[rows][:, cols]
        return self.est.group_raw(B_typical, self.groups, g)


def explain(est: TreeModel | LinearModel, B: np.ndarray, groups: list[np.ndarray]) -> Explanation:
    """`est`'s log-odds on `B` split by `groups`: trees run once, keeping each row's leaves."""
    if isinstance(est, TreeModel):
        paths = est.paths(groups)
        done = evaluate(est, paths, B)
        return Explanation(est, groups, B, done.total, done.per_group, paths, done)
    total, per_group = est.raw_by_group(B, groups)
    return Explanation(est, groups, B, total, per_group)
