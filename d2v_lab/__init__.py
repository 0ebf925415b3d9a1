"""d2v_lab: a workbench that teaches, and measures, how data2vec learns."""
__version__ = "0.1.0"
