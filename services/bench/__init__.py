"""The benchmark: every mode through the real services, the paper's claims measured.

``bench`` (cases, suites, running them), ``probe`` (the edge agent with a step timeline),
``metrics`` (pure functions over timelines), ``report`` (claims and tables), ``plots``,
``calibrate`` (the edge CPU time dilation factor), ``cli`` (``simultrain bench``).
See ``docs/BENCH.md``.
"""
