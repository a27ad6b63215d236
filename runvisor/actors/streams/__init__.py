"""One module per stream or bucket that more than one actor reads or writes (DESIGN §2).

``steps`` (``RV_STEPS``), ``control`` (``RV_CONTROL``), ``runs`` (KV ``rv_runs``), and
``_bucket``, reading a whole bucket in one pass. Buckets with a single owner stay with it:
``rv_checkpoints`` in ``agent/_store.py``, ``rv_leases`` in ``supervisor/leases.py``,
``rv_family`` in ``supervisor/_family.py``, ``rv_breakers`` and ``rv_results`` in ``tools/_kv.py``.
"""
