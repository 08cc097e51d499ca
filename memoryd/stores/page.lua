-- One page of an index ZSET with the records it names, in one round trip.
--
-- KEYS: 1 the index ZSET (the agent's list, or one type's ZSET).
-- ARGV: 1 memory key prefix (+ id = a record HASH), 2 "newest" or "oldest",
--       3 lowest score (e.g. "-inf" or "1700000000.5"), 4 highest score
--       (e.g. "+inf" or "(1700000100" for an exclusive bound), 5 offset, 6 count.
-- Returns id, data, id, data, ...; data is nil where the HASH is gone, so the
-- caller can repair that dangling index entry.

local index_key, memory_prefix, order = KEYS[1], ARGV[1], ARGV[2]
local ids
if order == 'newest' then
  ids = redis.call('ZREVRANGEBYSCORE', index_key, ARGV[4], ARGV[3], 'LIMIT', ARGV[5], ARGV[6])
else
  ids = redis.call('ZRANGEBYSCORE', index_key, ARGV[3], ARGV[4], 'LIMIT', ARGV[5], ARGV[6])
end

local page = {}
for _, id in ipairs(ids) do
  page[#page + 1] = id
  page[#page + 1] = redis.call('HGET', memory_prefix .. id, 'data')
end
return page
