"""The public API layer: one module per op; ``paramgeom`` re-exports the functions."""
