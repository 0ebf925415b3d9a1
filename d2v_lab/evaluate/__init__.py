"""Evaluation of one frozen encoder: probe tasks, features per layer, linear / k-NN probes, baselines and
the supervised reference. Depends on ``d2v_lab.train``, ``d2v_lab.model`` and ``d2v_lab.data``."""
