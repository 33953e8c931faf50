"""Step-time benchmarks of uniopt's adapters against each framework's own optimizers.

``python -m bench run torch`` (or ``jax``, ``tf``) times every variant of one framework in one
process, interleaved, and writes ``bench/results/<framework>.json`` (``--merge``: into the existing
file, replacing only the optimizers and sets it measures; the file lists each run and which
entries it measured); ``python -m bench report``
prints the ratio table and writes ``docs/benchmarks.md`` with its bar chart. ``nox -s bench`` runs
each framework in its own virtualenv, then the report.
"""
