-- Renew one daemon's lease among the writers of a key space: how many hold one,
-- and whether this daemon's lease was still there (not: the key space was
-- flushed, or the lease ran out).
--
-- KEYS: 1 writers ZSET (memoryd/stores/keys.py): daemon id -> lease end, in
--       milliseconds of the Redis server's clock, so daemons on hosts whose
--       clocks disagree still agree on whose lease is over.
-- ARGV: 1 daemon id, 2 lease in milliseconds (0: give the lease up), 3 the prefix
--       of the ids of daemons that send change notices.
-- Returns {daemons holding a lease, 1 if this one's was still there, how many of
-- them have an id without the prefix}.

local writers_key = KEYS[1]
local daemon_id, lease_ms, notices_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3] or ''
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', writers_key, '-inf', now_ms)
local held = redis.call('ZSCORE', writers_key, daemon_id) and 1 or 0
if lease_ms > 0 then
  redis.call('ZADD', writers_key, now_ms + lease_ms, daemon_id)
  redis.call('PEXPIRE', writers_key, lease_ms)
else
  redis.call('ZREM', writers_key, daemon_id)
end
local silent = 0
for _, member in ipairs(redis.call('ZRANGE', writers_key, 0, -1)) do
  if string.sub(member, 1, #notices_prefix) ~= notices_prefix then
    silent = silent + 1
  end
end
return {redis.call('ZCARD', writers_key), held, silent}
