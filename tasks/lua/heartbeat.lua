-- A worker says it is alive until now + ttl, on each queue it consumes, for each model it
-- has loaded (local workers). KEYS[1] workers zset, KEYS[2] worker hash
-- ARGV[1] worker id, ARGV[2] ttl (s), ARGV[3] key prefix, ARGV[4] queues (comma-separated),
-- ARGV[5] models (comma-separated, may be empty), ARGV[6..] worker hash field/value pairs.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local until_ = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], until_, ARGV[1])
for q in string.gmatch(ARGV[4], '[^,]+') do
  local qk = ARGV[3] .. ':queue:' .. q .. ':workers'
  redis.call('ZADD', qk, until_, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', qk, '-inf', now - 3600)
  for m in string.gmatch(ARGV[5], '[^,]+') do
    local mk = ARGV[3] .. ':queue:' .. q .. ':model:' .. m .. ':workers'
    redis.call('ZADD', mk, until_, ARGV[1])
    redis.call('ZREMRANGEBYSCORE', mk, '-inf', now - 3600)
  end
end
redis.call('HSET', KEYS[2], 'queues', ARGV[4], 'models', ARGV[5],
  'last_seen', string.format('%.3f', now), unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[2], 86400)
return 1
