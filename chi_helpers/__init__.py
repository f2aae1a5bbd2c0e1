"""Helpers behind the ML experiment tracking series on Chameleon.

One module per concern: `food11` (the data set's layout), `sample_data` (a small stand-in),
`local_stack` (the tracking stack as processes), `local_run` (the local target end to end),
`bench` (what tracking costs), `cli` (`python -m chi_helpers ...`).
Importing the package itself pulls in nothing beyond the standard library.
"""

__version__ = "0.1.0"
