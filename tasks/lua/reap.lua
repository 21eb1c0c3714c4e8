-- include: release
-- Requeue the running jobs of workers whose heartbeat expired, then forget those workers.
-- KEYS[1] workers zset; ARGV[1] key prefix, ARGV[2] most workers per pass.
-- Returns a flat list: job id, queue, new attempt, job id, queue, new attempt, ...
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, w in ipairs(dead) do
  local wkey = ARGV[1] .. ':worker:' .. w
  for _, j in ipairs(redis.call('SMEMBERS', wkey .. ':jobs')) do
    local h = ARGV[1] .. ':job:' .. j
    if redis.call('HGET', h, 'status') == 'running' and redis.call('HGET', h, 'worker') == w then
      local attempt = redis.call('HINCRBY', h, 'attempt', 1)
      local queue = redis.call('HGET', h, 'queue')
      redis.call('HSET', h, 'status', 'queued', 'worker', '')
      enqueue(ARGV[1], queue, j, t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
      table.insert(out, j)
      table.insert(out, queue)
      table.insert(out, tostring(attempt))
    end
  end
  local queues = redis.call('HGET', wkey, 'queues')
  local models = redis.call('HGET', wkey, 'models') or ''
  if queues then
    for q in string.gmatch(queues, '[^,]+') do
      redis.call('ZREM', ARGV[1] .. ':queue:' .. q .. ':workers', w)
      for m in string.gmatch(models, '[^,]+') do
        redis.call('ZREM', ARGV[1] .. ':queue:' .. q .. ':model:' .. m .. ':workers', w)
      end
    end
  end
  redis.call('DEL', wkey, wkey .. ':jobs')
  redis.call('ZREM', KEYS[1], w)
end
return out
