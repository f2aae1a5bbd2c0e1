# Imported by Python at start-up when this folder is on PYTHONPATH (chi_helpers.twin.guard.environment):
# refuse every connection outside 127.0.0.0/8 in this process, as the test process does.
import os

if os.environ.get("CHI_SERIES_NETWORK_GUARD") == "1":
    import importlib.util
    import sys

    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("_chi_series_guard", os.path.join(os.path.dirname(_here), "guard.py"))
    _guard = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_guard)
    _guard.install()
    sys.modules.setdefault("_chi_series_guard", _guard)
