"""Helpers behind the ML experiment tracking series on Chameleon.

The folder shows the architecture:

- `variants`, `parameters`: what every notebook checks first (the GPU variants as data);
- `kernel_setup`: what every notebook's setup cell does (helpers importable, missing packages installed);
- `series/`: the material: the notebooks in order, `build` (notebooks and pages from one source),
  `run` (the runner core both targets drive: papermill, progress, `report`);
- `local/`: the local target: the tracking stack as processes, the small data set, its runner;
- `chameleon/`: the real testbed through python-chi: sign-in, lease, server, node, release, its runner;
- `twin/`: a stand-in for Chameleon's services and the node, for tests and rehearsals;
- `food11`, `credentials`: standard library only, run as plain files on the node;
- `compose_file`: the node's Compose file as data (the MLflow options every stand-in of the node runs);
- `bench`, `progress`, `cli`.

Importing the package itself pulls in nothing beyond the standard library.
"""

__version__ = "0.1.0"
