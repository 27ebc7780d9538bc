"""OPD / SFT / RLVR training drivers (``paramgeom.drivers``).

Not written yet: see the project's issue on training drivers. The package exists so the
wheel layout (``paramgeom.drivers``) is fixed from the start.
"""
