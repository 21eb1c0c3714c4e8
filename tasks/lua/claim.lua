-- include: release
-- A worker takes a delivered job: drop stale or duplicate deliveries, honour a cancel that
-- came while queued, drop a synchronous job whose API process (its owner, which holds the
-- client's connection) is gone, write `restart` on a redelivery, mark it running.
-- KEYS[1] job hash, KEYS[2] events stream, KEYS[3] worker's job set, KEYS[4] API processes
-- ARGV[1] attempt carried by the message, ARGV[2] worker id, ARGV[3] job ttl, ARGV[4] job id,
-- ARGV[5] key prefix (the backlog index is <prefix>:queue:<queue>:queued), ARGV[6] task
-- messages the queue's list may hold ahead of workers: the worker took one, so fair dispatch
-- (release.lua) may release another
-- Returns {'ok', request json, token id base (ms)} or {reason}. A job cancelled here loses its
-- request body; the `restart` event's stream expires with the job hash, as every stream write
-- does (a stream that no attempt finishes would otherwise never expire).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local t = redis.call('TIME')
local queue = redis.call('HGET', KEYS[1], 'queue')
release(ARGV[5], queue, tonumber(ARGV[6]), tonumber(t[1]) + tonumber(t[2]) / 1e6)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return {'finished'} end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return {'stale'} end
if status == 'running' then return {'duplicate'} end
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
unqueue(ARGV[5], queue, ARGV[4])
local reason = nil
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  reason = 'cancelled'
else
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then
    local alive = redis.call('ZSCORE', KEYS[4], owner)
    if not alive or tonumber(alive) < tonumber(now) then reason = 'orphaned' end
  end
end
if reason then
  ended(ARGV[5], redis.call('HGET', KEYS[1], 'tenant'), ARGV[4])
  redis.call('HDEL', KEYS[1], 'request')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel', '1', 'finished', now)
  redis.call('XADD', KEYS[2], '*', 'type', 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return {reason}
end
local base = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[1]) > 1 then
  local id = redis.call('XADD', KEYS[2], '*', 'type', 'restart', 'attempt', ARGV[1])
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 then left = tonumber(ARGV[3]) * 1000 end
  redis.call('PEXPIRE', KEYS[2], left)
  base = tonumber(string.match(id, '^(%d+)'))
end
-- token ids are base+1-seq: above this attempt's restart, below nothing a later attempt writes
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'started', now)
redis.call('SADD', KEYS[3], ARGV[4])
return {'ok', redis.call('HGET', KEYS[1], 'request'), string.format('%.0f', base + 1)}
