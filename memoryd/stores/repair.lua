-- Repair one agent's keys after Redis evicted some of them (maxmemory-policy).
--
-- Eviction drops whole keys: a record HASH, the list ZSET, a type ZSET, the
-- types or stats HASH, the expiry ZSET.  What is left is made consistent again
-- with the record HASHes as the truth: an index entry whose HASH is gone leaves
-- every index; a HASH no index lists is indexed again, unless it has expired;
-- the agent is trimmed to max_memories; types and stats are counted afresh.
--
-- KEYS: 1 list ZSET, 2 types HASH, 3 stats HASH, 4 expiry ZSET (memoryd/stores/keys.py).
-- ARGV: 1 memory key prefix (+ id = a record HASH), 2 type key prefix (+ type =
--       a type ZSET), 3 max_memories, 4 n, then n types whose ZSETs SCAN found
--       (the types HASH that names them may be gone), then, flat:
--         C id                                                a HASH SCAN found unlisted
--         K id type created_at expires_at|"" pexpireat_ms|"" sha1   index this record
--         X id sha1                                           remove this expired record
-- A record's created_at and expires_at are inside its msgpack data, which only
-- the caller decodes: this script returns the ids whose data it needs, and the
-- caller calls it again with K and X for them.  sha1 is that of the data the
-- caller read; a HASH whose data changed since then is left alone.
-- Returns {index entries removed (ids), records indexed again, records removed
-- (expired or trimmed), live records changed (0/1), counts rewritten (0/1),
-- ids whose data is needed: HASHes no list names, expiring records the expiry
-- index lost}.
--
-- Every key is named from KEYS or the prefixes in ARGV, which carry the
-- agent's hash tag: the script touches one shard.

local list_key, types_key, stats_key, expiry_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local memory_prefix, type_prefix = ARGV[1], ARGV[2]
local max_memories = tonumber(ARGV[3])
local type_count = tonumber(ARGV[4])

local type_names, known_types = {}, {}
local function know_type(record_type)
  if not known_types[record_type] then
    known_types[record_type] = true
    type_names[#type_names + 1] = record_type
  end
end
for _, record_type in ipairs(redis.call('HKEYS', types_key)) do
  know_type(record_type)
end
for i = 5, 4 + type_count do
  know_type(ARGV[i])
end

local dropped, indexed, removed = 0, 0, 0
local live_changed, rewritten = false, false
local wanted, wanted_set = {}, {}

local function want(id)
  if not wanted_set[id] then
    wanted_set[id] = true
    wanted[#wanted + 1] = id
  end
end

local function unindex(id)
  local entries = redis.call('ZREM', list_key, id) + redis.call('ZREM', expiry_key, id)
  for _, record_type in ipairs(type_names) do
    entries = entries + redis.call('ZREM', type_prefix .. record_type, id)
  end
  return entries
end

local function drop_entries(id)
  -- The id's HASH is gone: nothing may name it any more.
  if unindex(id) > 0 then
    dropped = dropped + 1
  end
end

local function data_matches(memory_key, sha1)
  local data = redis.call('HGET', memory_key, 'data')
  return data and redis.sha1hex(data) == sha1
end

local function index(id, record_type, created_at, expires_at, pexpireat_ms, sha1)
  local memory_key = memory_prefix .. id
  if not data_matches(memory_key, sha1) then
    return
  end
  know_type(record_type)
  if redis.call('ZADD', list_key, created_at, id) == 1 then
    indexed = indexed + 1
    live_changed = true
  end
  for _, other in ipairs(type_names) do
    if other ~= record_type then
      redis.call('ZREM', type_prefix .. other, id)
    end
  end
  redis.call('ZADD', type_prefix .. record_type, created_at, id)
  redis.call('HSET', memory_key, 'type', record_type)
  if expires_at == '' then
    redis.call('ZREM', expiry_key, id)
    redis.call('PERSIST', memory_key)
  else
    redis.call('ZADD', expiry_key, expires_at, id)
    redis.call('PEXPIREAT', memory_key, pexpireat_ms)
  end
end

local function remove_expired(id, sha1)
  local memory_key = memory_prefix .. id
  if data_matches(memory_key, sha1) then
    redis.call('DEL', memory_key)
    unindex(id)
    removed = removed + 1
  end
end

-- On a Redis Cluster, while the agent's slot migrates, a key not on this node
-- fails the script where it is touched, and what ran before stays done; so
-- every key the steps below may touch is touched first (as in apply.lua).
local function preflight()
  local function touch(key)
    redis.call('EXISTS', key)
  end
  for _, record_type in ipairs(type_names) do
    local type_key = type_prefix .. record_type
    touch(type_key)
    for _, id in ipairs(redis.call('ZRANGE', type_key, 0, -1)) do
      touch(memory_prefix .. id)
    end
  end
  for _, index_key in ipairs({list_key, expiry_key}) do
    for _, id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
      touch(memory_prefix .. id)
    end
  end
  local j = 5 + type_count
  while j <= #ARGV do
    touch(memory_prefix .. (ARGV[j + 1] or ''))
    if ARGV[j] == 'K' then
      touch(type_prefix .. (ARGV[j + 2] or ''))
      j = j + 7
    elseif ARGV[j] == 'X' then
      j = j + 3
    else
      j = j + 2
    end
  end
end

preflight()

-- The records the caller read, then every index entry, then what SCAN found.
local candidates = {}
local i = 5 + type_count
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'C' then
    candidates[#candidates + 1] = ARGV[i + 1]
    i = i + 2
  elseif op == 'K' then
    index(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
    i = i + 7
  elseif op == 'X' then
    remove_expired(ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('memoryd repair: unknown operation ' .. tostring(op))
  end
end

local listed = redis.call('ZRANGE', list_key, 0, -1, 'WITHSCORES')
for n = 1, #listed, 2 do
  local id, created_at = listed[n], listed[n + 1]
  local memory_key = memory_prefix .. id
  local record_type = redis.call('HGET', memory_key, 'type')
  if not record_type then
    drop_entries(id)
  else
    know_type(record_type)
    redis.call('ZADD', type_prefix .. record_type, created_at, id)
    if redis.call('PTTL', memory_key) >= 0 and not redis.call('ZSCORE', expiry_key, id) then
      want(id) -- it expires, but the expiry index lost it
    end
  end
end

for _, record_type in ipairs(type_names) do
  local type_key = type_prefix .. record_type
  for _, id in ipairs(redis.call('ZRANGE', type_key, 0, -1)) do
    local actual = redis.call('HGET', memory_prefix .. id, 'type')
    if not actual then
      drop_entries(id)
    else
      if actual ~= record_type then
        redis.call('ZREM', type_key, id)
      end
      if not redis.call('ZSCORE', list_key, id) then
        want(id)
      end
    end
  end
end

for _, id in ipairs(redis.call('ZRANGE', expiry_key, 0, -1)) do
  if redis.call('EXISTS', memory_prefix .. id) == 0 then
    drop_entries(id)
  elseif not redis.call('ZSCORE', list_key, id) then
    want(id)
  end
end

for _, id in ipairs(candidates) do
  if redis.call('EXISTS', memory_prefix .. id) == 1 and not redis.call('ZSCORE', list_key, id) then
    want(id)
  end
end

-- Records indexed again may take the agent past max_memories: oldest first out.
local excess = redis.call('ZCARD', list_key) - max_memories
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', list_key, 0, excess - 1)) do
    redis.call('DEL', memory_prefix .. id)
    unindex(id)
    removed = removed + 1
    live_changed = true
  end
end

local function delete_all(keys)
  -- unpack() is bounded by the Lua stack, so delete in slices.
  local deleted = 0
  for first = 1, #keys, 500 do
    deleted = deleted + redis.call('DEL', unpack(keys, first, math.min(first + 499, #keys)))
  end
  return deleted
end

local function pairs_to_map(flat)
  local map = {}
  for n = 1, #flat, 2 do
    map[flat[n]] = flat[n + 1]
  end
  return map
end

local count = redis.call('ZCARD', list_key)
if count == 0 then
  -- No record left: no key left, as after the last delete.
  local keys = {list_key, types_key, stats_key, expiry_key}
  for _, record_type in ipairs(type_names) do
    keys[#keys + 1] = type_prefix .. record_type
  end
  rewritten = delete_all(keys) > 0
else
  local old_types = pairs_to_map(redis.call('HGETALL', types_key))
  local new_types, differs = {}, false
  for _, record_type in ipairs(type_names) do
    local n = redis.call('ZCARD', type_prefix .. record_type)
    if n > 0 then
      new_types[record_type] = tostring(n)
      differs = differs or old_types[record_type] ~= tostring(n)
    end
  end
  for record_type in pairs(old_types) do
    differs = differs or new_types[record_type] == nil
  end
  if differs then
    redis.call('DEL', types_key)
    for _, record_type in ipairs(type_names) do
      if new_types[record_type] then
        redis.call('HSET', types_key, record_type, new_types[record_type])
      end
    end
    rewritten = true
  end

  local total = 0
  for _, id in ipairs(redis.call('ZRANGE', list_key, 0, -1)) do
    total = total + redis.call('HSTRLEN', memory_prefix .. id, 'data')
  end
  local oldest = redis.call('ZRANGE', list_key, 0, 0, 'WITHSCORES')[2]
  local newest = redis.call('ZRANGE', list_key, -1, -1, 'WITHSCORES')[2]
  local fresh = {count = tostring(count), bytes = tostring(total), oldest = oldest, newest = newest}
  local old_stats = pairs_to_map(redis.call('HGETALL', stats_key))
  for field, value in pairs(fresh) do
    if old_stats[field] ~= value then
      rewritten = true
    end
  end
  if rewritten then
    redis.call('HSET', stats_key, 'count', fresh.count, 'bytes', fresh.bytes,
      'oldest', oldest, 'newest', newest)
  end
end

return {dropped, indexed, removed, live_changed and 1 or 0, rewritten and 1 or 0, wanted}
