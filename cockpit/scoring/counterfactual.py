"""Tree outputs of deals with one reason group set to its typical values, predicting only what changes.

A reason's points are the difference between a deal's score and the score of the same deal with one
group of features (days in stage, close-date pushes, ...) replaced by a typical deal's values
(`ScoringModel._explain`). Changing a group can only change a tree's output where the deal's path
through that tree passes a node that splits on a feature of the group: everywhere else the changed
deal reaches the same leaf. Nor can it where every such node sends the typical values the way the
deal went: the typical values depend on the deal's stage alone, so for each leaf, group and stage
`TreePaths.agreement` says once whether the path holds. So each tree is first run once to find every
deal's leaf, and a tree is run again on a changed deal only when the typical values leave the path
to its leaf.

The sums are formed exactly as predicting every tree on every changed deal would form them (same
values, same order of additions), so the points and the reasons they rank are bit-for-bit the same.
A linear model's contributions are additive already: `explain` reads them off its weight table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cockpit.scoring.estimators import MISSING, LinearModel, TreeModel, n_threads


@dataclass
class TreePaths:
    """For each tree: a predictor that returns the leaf's node index, the leaves' output values, and
    which groups the path to each node crosses."""

    leaf_predictors: list
    values: list[np.ndarray]
    group_of: np.ndarray
    """Each feature's group (-1: none)."""
    uses: np.ndarray
    """(groups x trees): True where the tree splits on the group anywhere."""
    _departures: dict[bytes, list[np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, est: TreeModel, groups: list[np.ndarray]) -> TreePaths:
        predictors = est.predictors()  # first: it prepares scikit-learn's import (thread waits)
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        group_of = np.full(len(est.thresholds), -1, dtype=np.int64)
        for g, cols in enumerate(groups):
            group_of[cols] = g
        leaf_predictors, values = [], []
        for pred in predictors:
            nodes = pred.nodes
            numbered = nodes.copy()
            numbered["value"] = np.arange(len(nodes), dtype=np.float64)
            leaf_predictors.append(
                TreePredictor(numbered, pred.binned_left_cat_bitsets, pred.raw_left_cat_bitsets)
            )
            values.append(np.ascontiguousarray(nodes["value"], dtype=np.float64))
        return cls(leaf_predictors, values, group_of, est._group_trees(groups))

    def agreement(self, refs: np.ndarray) -> list[np.ndarray]:
        """Per tree, (nodes x groups x rows of `refs`, binned typical rows): True where every node on
        the path from the root to the node that splits on the group sends the typical row the way
        the path goes. A deal whose leaf agrees with its typical row on a group reaches the same
        leaf with the group set to the typical values."""
        return [self._agree(p, refs, self.uses.shape[0]) for p in self.leaf_predictors]

    def departures(self, refs: np.ndarray) -> list[np.ndarray]:
        """Per tree and group, the `agreement` turned around and flat: True at `leaf * len(refs) + k`
        where typical row k leaves the path to the leaf (a deal there must be run again). Computed
        once per `refs`."""
        key = refs.tobytes()
        if key not in self._departures:
            n_groups = self.uses.shape[0]
            self._departures = {
                key: [~a.transpose(1, 0, 2).reshape(n_groups, -1) for a in self.agreement(refs)]
            }
        return self._departures[key]

    def _agree(self, pred, refs: np.ndarray, n_groups: int) -> np.ndarray:
        nodes = pred.nodes
        agree = np.ones((len(nodes), n_groups, len(refs)), dtype=bool)
        stack = [0]
        while stack:  # parents come before their children
            i = stack.pop()
            node = nodes[i]
            if node["is_leaf"]:
                continue
            left = _goes_left(node, pred.binned_left_cat_bitsets, refs[:, int(node["feature_idx"])])
            g = self.group_of[int(node["feature_idx"])]
            for child, way in ((int(node["left"]), left), (int(node["right"]), ~left)):
                agree[child] = agree[i]
                if g >= 0:
                    agree[child, g] &= way
                stack.append(child)
        return agree


def _goes_left(node: np.void, bitsets: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Whether binned values go to the left child of `node`, as scikit-learn's binned predictor
    decides (`_predict_one_binned`): the missing bin as the node says, a category by its bitset,
    a number by the bin threshold."""
    b = bins.astype(np.int64)
    if node["is_categorical"]:
        left = ((bitsets[int(node["bitset_idx"]), b // 32] >> (b % 32)) & 1).astype(bool)
    else:
        left = b <= int(node["bin_threshold"])
    return np.where(b == MISSING, bool(node["missing_go_to_left"]), left)


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
    refs: np.ndarray,
    ref_of: np.ndarray,
    keys: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Summed output of the trees that use group `g` (columns `cols`) on rows `rows` of `B` with those
    columns set to their typical row's (row i's is `refs[ref_of[i]]`): `TreeModel.group_raw` of the
    changed rows, re-running a tree only on the rows whose typical values leave the path to their leaf.
    `keys`: `leaf_keys(done, ref_of, len(refs))`, when the caller has them."""
    preds = est.predictors()
    threads = n_threads()
    departs = paths.departures(refs)
    keys = keys if keys is not None else leaf_keys(done, ref_of, len(refs))
    changed = B[rows]
    changed[:, cols] = refs[:, cols][ref_of[rows]]
    out = np.zeros(len(rows))
    for t in np.flatnonzero(paths.uses[g]):
        tree_out = done.out[t][rows]
        again = np.flatnonzero(departs[t][g][keys[t][rows]])
        if len(again):
            tree_out[again] = preds[t].predict_binned(changed[again], MISSING, threads)
        out += tree_out
    return out


def leaf_keys(done: Evaluated, ref_of: np.ndarray, n_refs: int) -> list[np.ndarray]:
    """Per tree, each row's leaf and typical row as one index into `TreePaths.departures`."""
    return [leaf * n_refs + ref_of for leaf in done.leaf]


@dataclass
class Explanation:
    """A model's log-odds on binned rows, split by reason group, and what a group's trees (or
    weights) give once that group is set to the rows' typical values (row i's is `refs[ref_of[i]]`,
    binned)."""

    est: TreeModel | LinearModel
    groups: list[np.ndarray]
    B: np.ndarray
    refs: np.ndarray
    ref_of: np.ndarray
    total: np.ndarray
    """Log-odds of each row."""
    per_group: np.ndarray
    """(groups x rows): the part of `total` that group `g` can change."""
    paths: TreePaths | None = None
    done: Evaluated | None = None
    keys: list[np.ndarray] | None = None
    """`leaf_keys` of the trees' rows."""

    def changed(self, g: int, rows: np.ndarray) -> np.ndarray:
        """`per_group[g, rows]` as it would be with group `g`'s columns of `rows` set to their typical
        row's. Safe to call from several threads at once."""
        cols = self.groups[g]
        if self.paths is not None and self.done is not None:
            return group_raw(
                self.est, self.paths, self.done, g, cols, rows, self.B, self.refs, self.ref_of, self.keys
            )
        B_typical = self.B[rows]
        B_typical[:, cols] = self.refs[self.ref_of[rows]][:, cols]
        return self.est.group_raw(B_typical, self.groups, g)


def explain(
    est: TreeModel | LinearModel, B: np.ndarray, groups: list[np.ndarray], refs: np.ndarray, ref_of: np.ndarray
) -> Explanation:
    """`est`'s log-odds on `B` split by `groups`, with typical row `refs[ref_of[i]]` for row i:
    trees run once, keeping each row's leaves (and what the typical rows' paths need, computed
    here so that `changed` only reads)."""
    if isinstance(est, TreeModel):
        paths = est.paths(groups)
        done = evaluate(est, paths, B)
        paths.departures(refs)
        keys = leaf_keys(done, ref_of, len(refs))
        return Explanation(est, groups, B, refs, ref_of, done.total, done.per_group, paths, done, keys)
    total, per_group = est.raw_by_group(B, groups)
    return Explanation(est, groups, B, refs, ref_of, total, per_group)
