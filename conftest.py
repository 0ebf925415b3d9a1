"""Repository-wide pytest setup. Notebooks run under nbval in the fast ``ci`` profile unless the caller
chose another (the kernels nbval starts inherit this environment)."""
import os

os.environ.setdefault("D2V_LAB_PROFILE", "ci")
