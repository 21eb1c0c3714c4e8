-- Create a queued job, honouring an Idempotency-Key and the queue's limit, and put its task
-- message on its queue in the same step: a job never exists without its message, nor a
-- message without its job, and a full queue is refused exactly (concurrent requests see it).
-- KEYS[1] job hash, KEYS[2] idempotency key ('' when none), KEYS[3] the queue's backlog
-- index, KEYS[4] the queue's list ('' to push nothing)
-- ARGV[1] job ttl (s), ARGV[2] idempotency ttl (s), ARGV[3] body digest, ARGV[4] the task
-- message, ARGV[5] most jobs waiting in the backlog (0: no limit), ARGV[6..] field/value pairs
-- Returns {'created'}, {'exists', job id, digest} or {'full', jobs waiting}.
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {'exists', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
local limit = tonumber(ARGV[5])
if limit > 0 then
  local waiting = redis.call('ZCARD', KEYS[3])
  if waiting >= limit then return {'full', waiting} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], t[1] .. '.' .. string.format('%06d', tonumber(t[2])),
  redis.call('HGET', KEYS[1], 'id'))
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], redis.call('HGET', KEYS[1], 'id') .. '|' .. ARGV[3], 'EX', ARGV[2])
end
if KEYS[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[4])
end
return {'created'}
