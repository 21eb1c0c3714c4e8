-- An API process says it is alive until now + ttl (Redis server time), and forgets
-- processes dead for over an hour. KEYS[1] API processes zset; ARGV[1] process id,
-- ARGV[2] ttl (s; 0 marks it dead now: a clean shutdown).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], ttl > 0 and now + ttl or 0, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600)
return 1
