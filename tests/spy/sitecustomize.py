"""Arms the weak-supervision spy (``tests/gt_spy.py``) in a Python process that a test started
with :func:`gt_spy.kernel_env`'s environment, e.g. a notebook kernel. Inert otherwise."""

import importlib.util
import os
import sys
from pathlib import Path

if os.environ.get("FETALCMR_TEST_FORBIDDEN_OPENS"):
    _spec = importlib.util.spec_from_file_location("fetalcmr_gt_spy", Path(__file__).resolve().parents[1] / "gt_spy.py")
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_spec.name] = _module  # dataclasses look their module up there
        _spec.loader.exec_module(_module)
        _module.arm_from_env()
