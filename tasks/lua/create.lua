-- include: release
-- Create a queued job, honouring an Idempotency-Key and the queue's limit, and hand its task
-- message to fair dispatch in the same step (release.lua): a job never exists without its
-- message, nor a message without its job, and a full queue is refused exactly (concurrent
-- requests see it).
-- KEYS[1] job hash, KEYS[2] idempotency key ('' when none), KEYS[3] the queue's backlog
-- index, KEYS[4] the queue's list ('' to dispatch nothing)
-- ARGV[1] job ttl (s), ARGV[2] idempotency ttl (s), ARGV[3] body digest, ARGV[4] the task
-- message, ARGV[5] most jobs of the tenant waiting in the backlog (0: no limit; each tenant
-- has its own share, so one key's backlog never refuses another's job), ARGV[6] key prefix,
-- ARGV[7] the job's tenant (its API key's name), ARGV[8] the tenant's max-parallel (0: none),
-- ARGV[9] task messages the list may hold ahead of workers, ARGV[10..] field/value pairs
-- Returns {'created'}, {'exists', job id, digest} or {'full', the tenant's jobs waiting}.
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {'exists', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
local limit = tonumber(ARGV[5])
local t = redis.call('TIME')
local share = KEYS[3] .. ':' .. ARGV[7] -- the tenant's own backlog on this queue
if limit > 0 then
  -- entries of jobs that vanished unseen (their hash expired) leave after a day
  redis.call('ZREMRANGEBYSCORE', share, '-inf', tonumber(t[1]) - 86400)
  local waiting = redis.call('ZCARD', share)
  if waiting >= limit then return {'full', waiting} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local id = redis.call('HGET', KEYS[1], 'id')
local stamp = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('ZADD', KEYS[3], stamp, id)
redis.call('ZADD', share, stamp, id)
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], id .. '|' .. ARGV[3], 'EX', ARGV[2])
end
if KEYS[4] ~= '' then
  local prefix, tenant, queue = ARGV[6], ARGV[7], KEYS[4]
  local tenant_hash = prefix .. ':tenant:' .. tenant
  if tonumber(ARGV[8]) > 0 then
    redis.call('HSET', tenant_hash, 'parallel', ARGV[8])
    redis.call('EXPIRE', tenant_hash, 86400)
  else
    redis.call('HDEL', tenant_hash, 'parallel')
  end
  local ring = prefix .. ':queue:' .. queue .. ':ring'
  local ahead = tonumber(ARGV[9])
  if tonumber(ARGV[8]) == 0 and redis.call('LLEN', ring) == 0
     and redis.call('LLEN', queue) < ahead then
    redis.call('LPUSH', queue, ARGV[4]) -- nobody is held and the list has room: no turn to wait
  else
    redis.call('HSET', KEYS[1], 'message', ARGV[4], 'held', '1')
    redis.call('LPUSH', prefix .. ':queue:' .. queue .. ':held:' .. tenant, id)
    if not redis.call('LPOS', ring, tenant) then
      redis.call('LPUSH', ring, tenant) -- a tenant with nothing held goes first
    end
    release(prefix, queue, ahead, tonumber(t[1]) + tonumber(t[2]) / 1e6)
  end
end
return {'created'}
