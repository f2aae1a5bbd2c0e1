"""A tracking stack's history in one file, and back: what outlives the lease.

- `location`: where a stack keeps its history (a local state folder, or the node's containers);
- `tables`: the databases, table by table, in a form any MLflow backend takes back;
- `stores`: the artifact store (a folder or an S3 bucket);
- `manifest`: the archive's contents and the checks before a restore;
- `make` (`stack archive`) and `restore` (`stack up --restore`).

On the node, `python -m chi_helpers.archive` runs inside the Compose file's `archive` service, which
reaches PostgreSQL and the object store as the MLflow server does.
"""
