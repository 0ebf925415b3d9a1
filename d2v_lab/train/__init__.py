"""Training: configs and presets, model-ready inputs, checkpoints, the run folder, devices and the loop.
Depends on ``d2v_lab.model`` and ``d2v_lab.data``."""
