-- include: release
-- A worker ends its attempt: terminal status, terminal event, expiry. Fenced: an attempt that
-- was superseded (its worker declared dead) writes nothing. The request body is dropped: no
-- one reads it once the job has ended, and it may be megabytes kept for the job's whole TTL.
-- KEYS[1] job hash, KEYS[2] events stream, KEYS[3] worker's job set
-- ARGV[1] attempt, ARGV[2] worker id, ARGV[3] status, ARGV[4] ttl, ARGV[5] job id,
-- ARGV[6] key prefix, ARGV[7] task messages the queue's list may hold ahead of workers,
-- ARGV[8..] event field/value pairs. Returns 1 if written, 0 if fenced off. The job's
-- tenant gets its max-parallel slot back, and fair dispatch may release a job (release.lua).
redis.call('SREM', KEYS[3], ARGV[5])
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2]
   or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
local t = redis.call('TIME')
redis.call('HDEL', KEYS[1], 'request')
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
ended(ARGV[6], redis.call('HGET', KEYS[1], 'tenant'), ARGV[5])
release(ARGV[6], redis.call('HGET', KEYS[1], 'queue'), tonumber(ARGV[7]), clock())
return 1
