-- Jobs queued for over ARGV[2] seconds whose queue has no message waiting: their delivery
-- was lost (a worker that had reserved it died; the broker connection dropped while it was
-- in flight). Returns them flat (job id, queue, attempt) to be published again, and moves
-- them to the back of the index; entries of jobs no longer queued are dropped.
-- KEYS[1] queued index; ARGV[1] key prefix, ARGV[2] age (s), ARGV[3] most per pass.
local now = tonumber(redis.call('TIME')[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, j in ipairs(old) do
  local h = ARGV[1] .. ':job:' .. j
  local status = redis.call('HGET', h, 'status')
  if status ~= 'queued' then
    redis.call('ZREM', KEYS[1], j)
  else
    local queue = redis.call('HGET', h, 'queue')
    if redis.call('LLEN', queue) == 0 then
      redis.call('ZADD', KEYS[1], now, j)
      table.insert(out, j)
      table.insert(out, queue)
      table.insert(out, redis.call('HGET', h, 'attempt'))
    end
  end
end
return out
