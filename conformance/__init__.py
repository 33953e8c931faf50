"""uniopt's conformance suite: the same optimizer cases, gradient streams and dtypes on every backend,
trajectories written to files, compared in ulp against the NumPy reference of the same dtype.

``python -m conformance run --backend NAME`` writes one backend's trajectories;
``python -m conformance compare`` reads them all and reports the matrix.
"""
