-- Create a queued job, honouring an Idempotency-Key.
-- KEYS[1] job hash, KEYS[2] idempotency key ('' when none), KEYS[3] queued-jobs index
-- ARGV[1] job ttl (s), ARGV[2] idempotency ttl (s), ARGV[3] body digest, ARGV[4..] field/value pairs
-- Returns {'created'} or {'exists', job id, digest}.
if KEYS[2] ~= '' then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local sep = string.find(prior, '|', 1, true)
    return {'exists', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], redis.call('TIME')[1], redis.call('HGET', KEYS[1], 'id'))
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], redis.call('HGET', KEYS[1], 'id') .. '|' .. ARGV[3], 'EX', ARGV[2])
end
return {'created'}
