"""Optimizer state moving between frameworks: an open-loop hop check and the digits demo.

``python -m demo check``: gradient streams through uniopt optimizers in TensorFlow, then PyTorch,
then JAX (one process each, weights and state passed through files), compared bit for bit with the
uninterrupted NumPy run. ``python -m demo digits``: an MLP trained with RAdam hopping the same way,
beside single-framework runs, with a loss plot. See docs/porting.md.
"""
