"""memoryd's benchmark suite: memoryd against the baselines its users have today.

Run it with ``make bench`` (or ``python -m bench.run``); ``make bench-quick`` for a small run.
"""
