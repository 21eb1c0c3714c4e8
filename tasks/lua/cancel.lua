-- include: release
-- Cancel a job: a queued one ends at once; a running one is flagged for its worker, which
-- stops at its next token. KEYS[1] job hash, KEYS[2] events stream; ARGV[1] ttl,
-- ARGV[2] job id, ARGV[3] key prefix (the backlog index is <prefix>:queue:<queue>:queued),
-- ARGV[4] task messages the queue's list may hold ahead of workers.
-- Returns the status after the call, or 'missing'. A job that ends here loses its request body
-- (nothing reads it after the end); a running one keeps it until its worker finishes it. A
-- cancelled queued job frees its tenant's max-parallel slot, so fair dispatch may release
-- another (release.lua); one still held is dropped when fair dispatch reaches it.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return status end
-- The body goes first: a script whose first write frees memory runs even when Redis is at its
-- maxmemory (noeviction refuses only a script's first write that may grow it).
if status == 'queued' then redis.call('HDEL', KEYS[1], 'request', 'message') end
redis.call('HSET', KEYS[1], 'cancel', '1')
if status == 'queued' then
  local queue = redis.call('HGET', KEYS[1], 'queue')
  unqueue(ARGV[3], queue, ARGV[2])
  ended(ARGV[3], redis.call('HGET', KEYS[1], 'tenant'), ARGV[2])
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  redis.call('XADD', KEYS[2], '*', 'type', 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  release(ARGV[3], queue, tonumber(ARGV[4]), clock())
  return 'cancelled'
end
return status
