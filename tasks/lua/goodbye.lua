-- A worker shutting down marks itself dead at once, so the API stops counting it and the
-- next reaper pass requeues anything it still held. KEYS[1] workers zset;
-- ARGV[1] worker id, ARGV[2] key prefix, ARGV[3] queues, ARGV[4] models (comma-separated).
redis.call('ZADD', KEYS[1], 0, ARGV[1])
for q in string.gmatch(ARGV[3], '[^,]+') do
  redis.call('ZREM', ARGV[2] .. ':queue:' .. q .. ':workers', ARGV[1])
  for m in string.gmatch(ARGV[4], '[^,]+') do
    redis.call('ZREM', ARGV[2] .. ':queue:' .. q .. ':model:' .. m .. ':workers', ARGV[1])
  end
end
return 1
