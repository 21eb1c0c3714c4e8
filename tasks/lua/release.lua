-- Fair dispatch, included by the scripts that change what a queue can take (create, claim,
-- finish, cancel, dispatch). A job is not pushed on its queue's list when it is created: it
-- waits in its API key's (its tenant's) held list, and `release` moves held jobs onto the list,
-- one tenant at a time in ring order, while fewer than `ahead` task messages wait there for a
-- worker. So one key with hundreds of jobs queued delays another key's job by at most a turn
-- of the ring, not by all its jobs. A tenant at its max-parallel (jobs dispatched and not
-- ended, in its running set, each until its deadline; kept only for a tenant with a cap) is
-- passed over until one ends.
-- Each tenant's jobs keep their order; a job cancelled while held is dropped here.
--   <prefix>:queue:<q>:ring           list  tenants with held jobs, served from the head
--   <prefix>:queue:<q>:held:<t>       list  job ids, newest first
--   <prefix>:tenant:<t>               hash  parallel: the tenant's max-parallel (absent: none)
--   <prefix>:tenant:<t>:running       zset  job id -> deadline
local function release(prefix, queue, ahead, now)
  local ring = prefix .. ':queue:' .. queue .. ':ring'
  local passed = 0
  while redis.call('LLEN', queue) < ahead do
    local turns = redis.call('LLEN', ring)
    if turns == 0 or passed >= turns then return end
    local tenant = redis.call('LPOP', ring)
    local held = prefix .. ':queue:' .. queue .. ':held:' .. tenant
    local running = prefix .. ':tenant:' .. tenant .. ':running'
    redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
    local cap = tonumber(redis.call('HGET', prefix .. ':tenant:' .. tenant, 'parallel') or '0')
    if cap > 0 and redis.call('ZCARD', running) >= cap then
      passed = passed + 1
      redis.call('RPUSH', ring, tenant)
    else
      local job = redis.call('RPOP', held)
      if job then
        local h = prefix .. ':job:' .. job
        local f = redis.call('HMGET', h, 'status', 'message', 'deadline')
        if f[1] == 'queued' and f[2] then
          redis.call('LPUSH', queue, f[2])
          redis.call('HDEL', h, 'message', 'held')
          if cap > 0 then redis.call('ZADD', running, tonumber(f[3]) or (now + 3600), job) end
          passed = 0
        end
      end
      if redis.call('LLEN', held) > 0 then redis.call('RPUSH', ring, tenant) end
    end
  end
end

-- A job leaves its queue's backlog (started, cancelled, dropped): out of the queue's index and
-- out of its tenant's, <prefix>:queue:<q>:queued:<t>, which counts the tenant's share of the
-- queue limit. Its tenant is read before the caller changes anything.
local function unqueue(prefix, queue, job)
  redis.call('ZREM', prefix .. ':queue:' .. queue .. ':queued', job)
  local tenant = redis.call('HGET', prefix .. ':job:' .. job, 'tenant')
  if tenant then redis.call('ZREM', prefix .. ':queue:' .. queue .. ':queued:' .. tenant, job) end
end

-- A job (back) in its queue's backlog, queued at `stamp`.
local function enqueue(prefix, queue, job, stamp)
  redis.call('ZADD', prefix .. ':queue:' .. queue .. ':queued', stamp, job)
  local tenant = redis.call('HGET', prefix .. ':job:' .. job, 'tenant')
  if tenant then redis.call('ZADD', prefix .. ':queue:' .. queue .. ':queued:' .. tenant, stamp, job) end
end

-- A job of `tenant` no longer runs (ended, cancelled, dropped): it frees a max-parallel slot.
local function ended(prefix, tenant, job)
  if tenant and tenant ~= '' then
    redis.call('ZREM', prefix .. ':tenant:' .. tenant .. ':running', job)
  end
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
