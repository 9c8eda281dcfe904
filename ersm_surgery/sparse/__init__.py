"""Compute follows the mask: run the stages a ``mask.gate=stage`` mask gates on the kept tokens only.

    model = ersm_surgery.load("r50-ersm/")       # fine-tuned with --set mask.gate=stage
    fast = ersm_surgery.sparse(model)            # same outputs, gated stages on kept tokens

One concept per module: :mod:`.grid` (kept tokens as rows, gather/scatter, neighbourhood index),
:mod:`.conv` (convolutions and average pooling on rows), :mod:`.fold` (BatchNorm folding, on rows and
in the dense modules), :mod:`.max_pool` (max pools of the dense parts in channels-last layout),
:mod:`.rowops` (element-wise ops, norms, per-image pooling), :mod:`.executor` (a
gated graph run node by node with a dense fallback per unknown op), :mod:`.model` (the wrapper and the
break-even rule).
See docs/sparse.md.
"""
import sys
import types

from .model import DEFAULT_BREAK_EVEN, SparseRegion, fold_model, rewrite_dense, sparse, sparse_regions

__all__ = ["sparse", "sparse_regions", "SparseRegion", "fold_model", "rewrite_dense", "DEFAULT_BREAK_EVEN"]


class _CallablePackage(types.ModuleType):
    """``ersm_surgery.sparse`` names both this package and the function: importing the package binds it
    to the attribute, so the package itself forwards a call to :func:`sparse`."""

    def __call__(self, model, *args, **kwargs):
        return sparse(model, *args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
