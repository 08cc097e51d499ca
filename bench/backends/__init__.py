"""The stores the benchmark compares, behind one small interface (``base``).

- ``files``: the original file store, one JSON array per agent rewritten on every add;
- ``direct``: the original Redis code path (RedisMemory and GlobalMemory), blocking and asyncio;
- ``memoryd``: memoryd through ``Client`` and ``AsyncClient``.
"""
