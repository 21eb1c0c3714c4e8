-- Cancel a job: a queued one ends at once; a running one is flagged for its worker, which
-- stops at its next token. KEYS[1] job hash, KEYS[2] events stream; ARGV[1] ttl,
-- ARGV[2] job id, ARGV[3] key prefix (the backlog index is <prefix>:queue:<queue>:queued).
-- Returns the status after the call, or 'missing'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
redis.call('HSET', KEYS[1], 'cancel', '1')
if status == 'queued' then
  local queue = redis.call('HGET', KEYS[1], 'queue')
  redis.call('ZREM', ARGV[3] .. ':queue:' .. queue .. ':queued', ARGV[2])
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  redis.call('XADD', KEYS[2], '*', 'type', 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  return 'cancelled'
end
return status
