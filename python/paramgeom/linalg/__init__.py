"""Linear algebra on implicit weight differences: randomized SVD, subspaces, sketches.

DESIGN.md "Kernels (the contract)" items 4 and 5 and the "Subspace rotation" metric. Weights
are read only through :mod:`paramgeom.linalg._ops`: the ``diff_matmul`` and ``gram_update``
kernels, and for the exact path's float64 Rayleigh-Ritz step a float32 Gram and float64
products of row blocks.
"""

from paramgeom.linalg._ops import GramSum, kernel_backend
from paramgeom.linalg.batched import (
    BatchedRotation,
    batched_principal_angles,
    batched_rotation,
    batched_svdvals,
)
from paramgeom.linalg.eigen import eigenvalues_desc, top_eigenpairs
from paramgeom.linalg.randomized_svd import diff_svdvals, randomized_svd
from paramgeom.linalg.sketch import Sketch
from paramgeom.linalg.subspaces import (
    PrincipalAngles,
    SubspaceRotation,
    TopSubspaces,
    principal_angles,
    subspace_rotation,
    top_subspaces,
)

__all__ = [
    "BatchedRotation",
    "GramSum",
    "batched_principal_angles",
    "batched_rotation",
    "batched_svdvals",
    "diff_svdvals",
    "eigenvalues_desc",
    "kernel_backend",
    "PrincipalAngles",
    "Sketch",
    "SubspaceRotation",
    "TopSubspaces",
    "principal_angles",
    "randomized_svd",
    "subspace_rotation",
    "top_eigenpairs",
    "top_subspaces",
]
