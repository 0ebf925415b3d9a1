"""Repository-wide pytest setup. Notebooks run under nbval in the fast ``ci`` profile unless the caller
chose another, and write their derived files (the tokenizer) into a temporary cache, never the user's
~/.cache (the kernels nbval starts inherit this environment)."""
import os
import tempfile

import pytest

os.environ.setdefault("D2V_LAB_PROFILE", "ci")
os.environ.setdefault("D2V_LAB_CACHE", tempfile.mkdtemp(prefix="d2v_lab_cache_"))


def pytest_collection_modifyitems(config, items):
    """Mark as ``integration`` every test that needs the real data: the notebooks, and the tests that
    use the ``shared_root`` fixture. ``pytest -m "not integration"`` is then the quick loop that needs
    no data."""
    for item in items:
        if item.path.suffix == ".ipynb" or "shared_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
