"""Helpers behind the ML experiment tracking series on Chameleon.

One module per concern: `variants` (the GPU variants as data), `parameters` (checks on a
notebook's parameters), `food11` (the data set's layout), `sample_data` (a small stand-in),
`local_stack` (the tracking stack as processes), `local_target` (the local target's settings),
`series` (the notebooks in order), `build` (notebooks and pages from one source), `series_run`
and `report` (running the series with papermill), `bench` (what tracking costs), `cli`.
Importing the package itself pulls in nothing beyond the standard library.
"""

__version__ = "0.1.0"
