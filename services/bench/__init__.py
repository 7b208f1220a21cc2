"""The experiments: every mode through the real services, the paper's claims measured, and the
studies of staleness, fleets and replicas.

``harness`` (one shape for every experiment: cases, ``run_one``, typed records, render),
``records`` (the typed records and results files), ``suites`` (the suites that run alone),
``bench`` (the benchmark's cases and suites), ``fleet`` (many agents against one cloud;
stragglers), ``fleet_parity``, ``study``, ``replicas_inprocess``, ``probe`` (the edge agent
with a step timeline), ``metrics`` (pure functions over timelines), ``report`` (claims and
tables), ``plots``, ``calibrate`` (the edge CPU time dilation factor), ``cli`` (the commands).
See ``docs/BENCH.md``.
"""
