"""Repository-wide pytest setup. Notebooks run under nbval in the fast ``ci`` profile unless the caller
chose another, and write their derived files (the tokenizer) into a temporary cache, never the user's
~/.cache (the kernels nbval starts inherit this environment)."""
import os
import tempfile

os.environ.setdefault("D2V_LAB_PROFILE", "ci")
os.environ.setdefault("D2V_LAB_CACHE", tempfile.mkdtemp(prefix="d2v_lab_cache_"))
