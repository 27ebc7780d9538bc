"""Columns of the per-tensor tables that ``paramgeom diff`` and ``trajectory`` write.

One place defines them so the engine, the journal and the report agree. Tables hold figures
only (no timings, no run-dependent paths): two runs on the same inputs, with any number of
ranks, give identical tables.
"""

from __future__ import annotations

# name: (arrow type, description). Missing values are None (null in Parquet, empty in CSV).
DIFF_COLUMNS: dict[str, tuple[str, str]] = {
    "name": (
        "string",
        "tensor name (tuned checkpoint's spelling; '[e]' suffix: expert e of a 3-D stack)",
    ),
    "base_name": ("string", "name in the base checkpoint"),
    "module": ("string", "q,k,v,o,gate,up,down,embed,lm_head,norm,bias,router,other"),
    "layer": ("int64", "decoder layer index, None outside the layers"),
    "expert": ("int64", "expert index for mixture-of-experts weights, else None"),
    "stack": ("string", "expert stack (name without the expert index), else None"),
    "shape": ("string", "shape as 'AxB' ('' for 0-d)"),
    "numel": ("int64", "parameter count"),
    "dtype_base": ("string", "stored dtype of the base tensor"),
    "dtype_tuned": ("string", "stored dtype of the tuned tensor"),
    "unchanged_fraction": ("float64", "bf16 relative rule |w1-w0| <= eta max(|w0|,|w1|)"),
    "unchanged_fraction_atol": ("float64", "|w1-w0| <= 1e-5 (older tools' rule)"),
    "equal_fraction": ("float64", "bitwise/numerically equal after the bf16 rule's cast"),
    "n_nonfinite": ("int64", "NaN/Inf count over base and tuned (excluded from figures)"),
    "frobenius_delta": ("float64", "||dW||_F"),
    "frobenius_base": ("float64", "||W0||_F"),
    "relative_change": ("float64", "||dW||_F / ||W0||_F"),
    "max_abs_delta": ("float64", "max |w1 - w0|"),
    "stable_rank": ("float64", "||dW||_F^2 / ||dW||_2^2 (2-D only)"),
    "effective_rank": ("float64", "exp(entropy of normalised singular values of dW) (2-D only)"),
    "spectral_drift": ("float64", "||s(W1) - s(W0)|| / ||s(W0)|| over the top-K values (2-D only)"),
    "rank_k": ("int64", "K of the subspaces compared (2-D only)"),
    "angle_left_max": ("float64", "max principal angle of the top-K left subspaces, degrees"),
    "angle_left_mean": ("float64", "mean principal angle of the top-K left subspaces, degrees"),
    "angle_right_max": ("float64", "max principal angle of the top-K right subspaces, degrees"),
    "angle_right_mean": ("float64", "mean principal angle of the top-K right subspaces, degrees"),
    "spectrum": ("string", "how dW's spectrum was found: 'exact' or 'randomized' (2-D only)"),
    "subspace_steps": (
        "int64",
        "block Krylov blocks (two products each) for W0's and W1's top-K subspaces together "
        "(randomized path; None where they come from an exact eigendecomposition)",
    ),
    "subspace_residual": (
        "float64",
        "largest relative Ritz residual max_i ||W^T u_i - s_i v_i|| / s_1 over W0's and W1's "
        "top-K triplets (randomized path; 0 where the exact Gram path answered; it bounds "
        "the subspace error: sin(theta) <= residual * s_1 / (s_K - s_K+1); above 1e-6 the "
        "method stopped at its block cap and the angles are not converged)",
    ),
    "changed_in_principal": (
        "float64",
        "--masks: fraction of the changed entries inside W0's principal mask (top half of "
        "|rank-64 reconstruction|; 0.5 if changes ignored it)",
    ),
    "changed_in_low_magnitude": (
        "float64",
        "--masks: fraction of the changed entries inside W0's low-magnitude mask (bottom half "
        "of |W0|)",
    ),
}

TRAJECTORY_COLUMNS: dict[str, tuple[str, str]] = {
    "name": ("string", "matrix name"),
    "module": ("string", "module type, as in the diff table"),
    "layer": ("int64", "decoder layer index"),
    "expert": ("int64", "expert index, else None"),
    "shape": ("string", "matrix shape 'mxn' (K is only meaningful when K << min(m, n))"),
    "numel": ("int64", "parameter count (weights the model-level unchanged fraction)"),
    "step": ("int64", "checkpoint step (from its folder name, else its position)"),
    "checkpoint": ("string", "checkpoint folder or file name (not its full path)"),
    "frobenius_delta": ("float64", "||dW_t||_F (finite pairs only)"),
    "relative_change": ("float64", "||dW_t||_F / ||W0||_F"),
    "n_nonfinite": (
        "int64",
        "NaN/Inf values in W0 plus those in W_t (excluded from the figures; no spectra then)",
    ),
    "stable_rank": ("float64", "srank(dW_t) from the sketch's top singular values"),
    "hill_alpha": ("float64", "Hill tail index of the squared singular values of dW_t"),
    "sim_k": ("float64", "Sim_K(t, t_end) = ||V_K(t)^T V_K(t_end)||_F^2 / K"),
    "unchanged_fraction": ("float64", "bf16 relative rule against the base"),
}
