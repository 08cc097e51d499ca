-- Apply one agent's operations of a batch as one atomic step.
--
-- KEYS: 1 list ZSET, 2 types HASH, 3 stats HASH, 4 expiry ZSET, 5 applied HASH
--       (memoryd/stores/keys.py).
-- ARGV: 1 memory key prefix (+ id = a record HASH), 2 type key prefix (+ type =
--       a type ZSET), 3 now_s, 4 max_memories, 5 source ("" when the operations
--       are not numbered), 6 how long the applied HASH is kept, in ms, then the
--       operations, flat, each after its number (0 when not numbered):
--         seq P id type created_at expires_at|"" pexpireat_ms|"" data   store unless present
--         seq R id type created_at expires_at|"" pexpireat_ms|"" data   overwrite if present
--         seq D id                                                   remove
--         seq E id                                                   remove if its HASH is gone
--         seq C                                                      remove everything
-- Before the operations, every record due at now_s is removed (the expire step),
-- so that counts, trimming and existence checks only ever see live records.
-- With a source, an operation numbered at or below the applied HASH's number for
-- that source is skipped, and the HASH is raised to the highest number applied
-- and kept ARGV[6] ms more: a batch applied again changes nothing the first
-- apply changed.
-- Returns {expired removed, stats HASH as pairs, types HASH as pairs}.
--
-- Record HASHes and type ZSETs are named from prefixes passed in ARGV; they all
-- carry the agent's hash tag, so they live on the same shard as KEYS.

local list_key, types_key, stats_key, expiry_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local applied_key = KEYS[5]
local memory_prefix, type_prefix = ARGV[1], ARGV[2]
local now_s = ARGV[3]
local max_memories = tonumber(ARGV[4])
local source = ARGV[5]
local applied_kept_ms = ARGV[6]

local bytes_exact = true -- false once a listed record vanished without telling its size
local changed = false -- indexes changed: oldest/newest/count need refreshing
local wrote = false -- an operation (not the expire step) changed something

local function find_type(id)
  for _, record_type in ipairs(redis.call('HKEYS', types_key)) do
    if redis.call('ZSCORE', type_prefix .. record_type, id) then
      return record_type
    end
  end
  return nil
end

local function index_type(record_type, id, created_at)
  if redis.call('ZADD', type_prefix .. record_type, created_at, id) == 1 then
    redis.call('HINCRBY', types_key, record_type, 1)
  end
end

local function unindex_type(record_type, id)
  if redis.call('ZREM', type_prefix .. record_type, id) == 1 then
    if redis.call('HINCRBY', types_key, record_type, -1) <= 0 then
      redis.call('HDEL', types_key, record_type)
      redis.call('DEL', type_prefix .. record_type)
    end
  end
end

local function remove_record(id)
  local memory_key = memory_prefix .. id
  local listed = redis.call('ZREM', list_key, id) == 1
  local record_type = redis.call('HGET', memory_key, 'type')
  if record_type then
    if listed then
      redis.call('HINCRBY', stats_key, 'bytes', -redis.call('HSTRLEN', memory_key, 'data'))
    end
    redis.call('DEL', memory_key)
  else
    -- The HASH is gone (expired past its grace, or evicted): its type is
    -- still named by the type ZSET holding the id; its size is recounted.
    record_type = find_type(id)
    if listed then
      bytes_exact = false
    end
  end
  redis.call('ZREM', expiry_key, id)
  if record_type then
    unindex_type(record_type, id)
  end
  if listed or record_type then
    changed = true
  end
  return listed or record_type ~= nil
end

local function set_expiry(memory_key, id, expires_at, pexpireat_ms)
  if expires_at == '' then
    redis.call('ZREM', expiry_key, id)
    redis.call('PERSIST', memory_key)
  else
    redis.call('ZADD', expiry_key, expires_at, id)
    redis.call('PEXPIREAT', memory_key, pexpireat_ms)
  end
end

local function trim()
  local excess = redis.call('ZCARD', list_key) - max_memories
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', list_key, 0, excess - 1)) do
      remove_record(id)
    end
  end
end

local function put(id, record_type, created_at, expires_at, pexpireat_ms, data)
  local memory_key = memory_prefix .. id
  local listed = redis.call('ZSCORE', list_key, id)
  local present = redis.call('EXISTS', memory_key) == 1
  if listed and present then
    return
  end
  if listed or present then
    remove_record(id) -- half a record (index without HASH, or HASH without index)
  end
  redis.call('HSET', memory_key, 'type', record_type, 'data', data)
  redis.call('ZADD', list_key, created_at, id)
  index_type(record_type, id, created_at)
  redis.call('HINCRBY', stats_key, 'bytes', string.len(data))
  set_expiry(memory_key, id, expires_at, pexpireat_ms)
  changed, wrote = true, true
  trim()
end

local function replace(id, record_type, created_at, expires_at, pexpireat_ms, data)
  local memory_key = memory_prefix .. id
  if not redis.call('ZSCORE', list_key, id) then
    return
  end
  local old_type = redis.call('HGET', memory_key, 'type')
  if not old_type then
    wrote = remove_record(id) or wrote -- a dangling index entry: the record is gone
    return
  end
  redis.call('HINCRBY', stats_key, 'bytes',
    string.len(data) - redis.call('HSTRLEN', memory_key, 'data'))
  redis.call('HSET', memory_key, 'type', record_type, 'data', data)
  redis.call('ZADD', list_key, created_at, id)
  if old_type ~= record_type then
    unindex_type(old_type, id)
  end
  index_type(record_type, id, created_at)
  set_expiry(memory_key, id, expires_at, pexpireat_ms)
  changed, wrote = true, true
end

local function delete_all(keys)
  -- unpack() is bounded by the Lua stack, so delete in slices.
  for first = 1, #keys, 500 do
    redis.call('DEL', unpack(keys, first, math.min(first + 499, #keys)))
  end
end

local function drop_agent_keys()
  local keys = {list_key, types_key, stats_key, expiry_key}
  for _, record_type in ipairs(redis.call('HKEYS', types_key)) do
    keys[#keys + 1] = type_prefix .. record_type
  end
  delete_all(keys)
end

local function clear()
  local memory_keys = {}
  for _, index in ipairs({list_key, expiry_key}) do
    for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
      memory_keys[#memory_keys + 1] = memory_prefix .. id
    end
  end
  if #memory_keys > 0 or redis.call('EXISTS', stats_key) == 1 then
    changed, wrote = true, true
  end
  delete_all(memory_keys)
  drop_agent_keys()
end

local function recount_bytes()
  local total = 0
  for _, id in ipairs(redis.call('ZRANGE', list_key, 0, -1)) do
    total = total + redis.call('HSTRLEN', memory_prefix .. id, 'data')
  end
  redis.call('HSET', stats_key, 'bytes', total)
end

local function finish()
  local count = redis.call('ZCARD', list_key)
  if count == 0 then
    -- No record left: no key left, so SCAN over stats keys stops listing the agent.
    drop_agent_keys()
    return
  end
  if not bytes_exact then
    recount_bytes()
  end
  if changed then
    local oldest = redis.call('ZRANGE', list_key, 0, 0, 'WITHSCORES')
    local newest = redis.call('ZRANGE', list_key, -1, -1, 'WITHSCORES')
    redis.call('HSET', stats_key, 'count', count, 'oldest', oldest[2], 'newest', newest[2])
  end
  if wrote then
    redis.call('HSET', stats_key, 'last_write', now_s)
  end
end

-- On a Redis Cluster, while the agent's slot migrates, a key not on this node
-- (moved already, or not yet created) fails the script where it is touched,
-- and what ran before stays done.  So every key the steps below may touch is
-- touched first, before anything is written: a migrating slot fails the
-- script before it changes anything, and memoryd sends it again once the slot
-- has moved.  On one server this costs a read per key the steps touch anyway.
local function preflight()
  local touched = {}
  local function touch(key)
    touched[#touched + 1] = key
  end
  for _, record_type in ipairs(redis.call('HKEYS', types_key)) do
    touch(type_prefix .. record_type)
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_s)) do
    touch(memory_prefix .. id)
  end
  local puts = 0
  local i = 8
  while i <= #ARGV do
    local op = ARGV[i]
    if op == 'P' or op == 'R' then
      touch(memory_prefix .. ARGV[i + 1])
      touch(type_prefix .. ARGV[i + 2])
      puts = puts + 1
      i = i + 8
    elseif op == 'C' then
      for _, index in ipairs({list_key, expiry_key}) do
        for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
          touch(memory_prefix .. id)
        end
      end
      i = i + 2
    else
      touch(memory_prefix .. (ARGV[i + 1] or ''))
      i = i + 3
    end
  end
  local excess = redis.call('ZCARD', list_key) + puts - max_memories
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', list_key, 0, excess - 1)) do
      touch(memory_prefix .. id)
    end
  end
  for _, key in ipairs(touched) do
    redis.call('EXISTS', key)
  end
end

preflight()

local expired = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_s)) do
  remove_record(id)
  expired = expired + 1
end

local applied = 0
if source ~= '' then
  applied = tonumber(redis.call('HGET', applied_key, source) or '0')
end
local newest = applied

local i = 7
while i <= #ARGV do
  local seq, op = tonumber(ARGV[i]), ARGV[i + 1]
  local skip = source ~= '' and seq <= applied
  if not skip and seq > newest then
    newest = seq
  end
  i = i + 1
  if op == 'P' or op == 'R' then
    if not skip then
      local apply_op = op == 'P' and put or replace
      apply_op(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
    end
    i = i + 7
  elseif op == 'D' then
    if not skip then
      wrote = remove_record(ARGV[i + 1]) or wrote
    end
    i = i + 2
  elseif op == 'E' then
    if not skip and redis.call('EXISTS', memory_prefix .. ARGV[i + 1]) == 0 then
      remove_record(ARGV[i + 1])
    end
    i = i + 2
  elseif op == 'C' then
    if not skip then
      clear()
    end
    i = i + 1
  else
    return redis.error_reply('memoryd apply: unknown operation ' .. tostring(op))
  end
end
if source ~= '' then
  if newest > applied then
    redis.call('HSET', applied_key, source, newest)
  end
  if newest > 0 then
    redis.call('PEXPIRE', applied_key, applied_kept_ms)
  end
end

finish()
return {expired, redis.call('HGETALL', stats_key), redis.call('HGETALL', types_key)}
