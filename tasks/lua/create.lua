-- Create a queued job, honouring an Idempotency-Key, and put its task message on its queue
-- in the same step: a job never exists without its message, nor a message without its job.
-- KEYS[1] job hash, KEYS[2] idempotency key ('' when none), KEYS[3] queued-jobs index,
-- KEYS[4] the queue's list ('' to push nothing)
-- ARGV[1] job ttl (s), ARGV[2] idempotency ttl (s), ARGV[3] body digest, ARGV[4] the task
-- message, ARGV[5..] field/value pairs
-- Returns {'created'} or {'exists', job id, digest}.
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {'exists', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], redis.call('TIME')[1], redis.call('HGET', KEYS[1], 'id'))
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], redis.call('HGET', KEYS[1], 'id') .. '|' .. ARGV[3], 'EX', ARGV[2])
end
if KEYS[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[4])
end
return {'created'}
