"""Swift as the reference (``node/Swift.py``) implements it: DivShare's loop with the whole model as one
fragment (m = 1) and no flush, so a slow sender's messages pile up and arrive ever staler.
(The original SWIFT of Bornstein et al. is a different algorithm; see spec/paper.md §7.)"""

from divjax.algorithms import divshare

ALGORITHM = divshare.make("swift", flushes=False)
