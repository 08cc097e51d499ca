"""TableRound's memory API on memoryd: change two import lines, keep the agent code.

``MemoryAdapter`` (per agent, awaitable), ``GlobalMemory`` (per meeting,
awaitable) and the legacy synchronous ``Memory`` have the original's
constructors and methods; every call goes through memoryd, nothing talks to
Redis.  The text they return is the original's to the byte (see ``text``).

Where the original's two backends disagreed, these facades follow what its
agent code relies on today, or else the cleaner of the two:

- ``MemoryAdapter.get_memories_by_type``: the newest ten, newest first (its
  Redis backend; ``conversation.py`` takes element 0 as "the latest").  The
  legacy ``Memory`` keeps its file semantics: all of them, oldest first.
- ``get_conversation_history``: every discussion, oldest first, as
  ``role 关于 topic 的发言: text`` joined by blank lines (the file backend's
  format; the Redis adapter only emulated it with generic lines).
- ``get_all_memories``: every stored memory, oldest first (memoryd keeps at
  most ``max_memories`` per agent, as the Redis backend did).
- ``get_relevant_memories``: the newest ``limit``, newest first; ``topic`` is
  ignored, as it always was.
- ``search_memories_by_content``: memoryd's case-insensitive substring search
  over the memory's text (the original matched the rendered line, so a
  search for a date or a label no longer matches).
- ``clear_memories`` clears the agent's own stream and ``clear_session`` the
  meeting's own; the original's cleanup wiped every agent and meeting.
- ``get_memory_stats`` counts what is stored now, never "ever added";
  ``last_update`` is the newest memory's time.  ``get_storage_info`` and
  ``is_redis_enabled`` describe memoryd's store as it is now (Redis in use and
  reachable), not an environment flag.
- ``GlobalMemory.get_meeting_timeline`` applies its stage and agent filters
  before the limit (the original fetched ``limit`` speeches, then filtered,
  and returned fewer).  ``get_current_context`` keeps the original's choice
  exactly: the newest ``max_context`` speeches, the requester's own then left
  out, so it may show fewer.
- Speech ids are memoryd record ids (the original's ``<ms>_<agent>`` ids
  collided for two speeches of one agent in one millisecond).
- Content round-trips through msgpack: tuples come back as lists, which the
  default template (``type: str(content)``) then shows with brackets.
"""

from __future__ import annotations

from memoryd_client.compat.tableround.meeting import GlobalMemory
from memoryd_client.compat.tableround.personal import Memory, MemoryAdapter

__all__ = ["GlobalMemory", "Memory", "MemoryAdapter"]
