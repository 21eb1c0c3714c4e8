-- include: release
-- Jobs queued for over ARGV[2] seconds whose queue has no message waiting: their delivery
-- was lost (a worker that had reserved it died; the broker connection dropped while it was
-- in flight). Returns them flat (job id, queue, attempt) to be published again, and moves
-- them to the back of their index. Entries of jobs no longer queued are dropped; a
-- synchronous job whose API process (its owner) is gone is cancelled, never published again,
-- and loses its request body (nothing reads it after the end) and its tenant's max-parallel
-- slot (release.lua).
-- KEYS[1] API processes zset, KEYS[2..] backlog indexes of the queues to look at
-- ARGV[1] key prefix, ARGV[2] age (s), ARGV[3] most per pass, ARGV[4] job ttl (s)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local stamp = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local out = {}
local budget = tonumber(ARGV[3])
for i = 2, #KEYS do
  local old = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[2]),
    'LIMIT', 0, budget)
  for _, j in ipairs(old) do
    local h = ARGV[1] .. ':job:' .. j
    local status = redis.call('HGET', h, 'status')
    local owner = redis.call('HGET', h, 'owner')
    local alive = owner and redis.call('ZSCORE', KEYS[1], owner)
    local queue = redis.call('HGET', h, 'queue')
    if not queue then
      redis.call('ZREM', KEYS[i], j) -- its hash is gone: nothing names its tenant's index
    elseif status ~= 'queued' then
      unqueue(ARGV[1], queue, j)
    elseif owner and (not alive or tonumber(alive) < now) then
      unqueue(ARGV[1], queue, j)
      ended(ARGV[1], redis.call('HGET', h, 'tenant'), j)
      redis.call('HDEL', h, 'request')
      redis.call('HSET', h, 'status', 'cancelled', 'cancel', '1', 'finished', stamp)
      redis.call('XADD', h .. ':events', '*', 'type', 'cancelled')
      redis.call('EXPIRE', h, ARGV[4])
      redis.call('EXPIRE', h .. ':events', ARGV[4])
    elseif redis.call('HGET', h, 'held') ~= '1' then -- a held job waits its turn (release.lua)
      if redis.call('LLEN', queue) == 0 then
        enqueue(ARGV[1], queue, j, stamp)
        table.insert(out, j)
        table.insert(out, queue)
        table.insert(out, redis.call('HGET', h, 'attempt'))
      end
    end
  end
  budget = budget - #old
  if budget <= 0 then break end
end
return out
