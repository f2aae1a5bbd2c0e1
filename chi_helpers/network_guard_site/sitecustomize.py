# Imported by Python at start-up when this folder is on PYTHONPATH (chi_helpers.network_guard.environment):
# refuse every connection outside CHI_SERIES_ALLOWED_NETWORKS in this process, as its parent does.
# Loaded by path, so a kernel guards itself before (and without) importing the chi_helpers package.
import os

if os.environ.get("CHI_SERIES_ALLOWED_NETWORKS"):
    import importlib.util
    import sys

    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("_chi_series_guard", os.path.join(os.path.dirname(_here), "network_guard.py"))
    _guard = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_guard)
    _guard.install()
    sys.modules.setdefault("_chi_series_guard", _guard)
