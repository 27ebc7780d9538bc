"""Index layout of the diff-statistics output vectors.

Mirrors ``csrc/include/paramgeom/diff_stats.h`` (``CountIndex``, ``SumIndex``); a test checks
these numbers against the compiled module. Every backend returns its totals in this layout:
an int64 vector of ``NUM_COUNTS`` counts and a float64 vector of ``NUM_SUMS`` sums.
"""

MAX_TOLS = 8
GROUP_ELEMS = 1 << 16

COUNT = 0
EQUAL = 1
NONFINITE0 = 2
NONFINITE1 = 3
REL0 = 4
ABS0 = REL0 + MAX_TOLS
NUM_COUNTS = ABS0 + MAX_TOLS

SUM_SQ_DELTA = 0
SUM_SQ_W0 = 1
SUM_SQ_W1 = 2
SUM_W0W1 = 3
MAX_ABS_DELTA = 4
NUM_SUMS = 5
