"""Model families behind one FlowModel interface (base.py); the family table and `load_model` are in families.py.

Nothing is imported here, so that `trainer.models.families` (what the config validates against) loads no diffusers.
"""
