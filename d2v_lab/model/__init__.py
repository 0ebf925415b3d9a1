"""The algorithm: masking, the Transformer, the thin modality adapters, the EMA teacher, the targets and
data2vec 1.0 / 2.0 itself (``data2vec.py``). Depends only on ``d2v_lab.data`` (special token ids)."""
