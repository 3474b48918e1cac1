"""What every layer shares; the lowest layer, importing nothing else from milco-os.

- :mod:`~milco_os.core.errors`: the one error hierarchy and its exit statuses;
- :mod:`~milco_os.core.threads`: how many CPU threads an encode call uses;
- :mod:`~milco_os.core.retry`: which failures are transient, and the backoff between tries.
"""
