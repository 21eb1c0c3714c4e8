-- May a request go to these backends now? For each: 1 closed, 2 this request is the single
-- half-open probe (the cool-down is over), 0 open (or a probe is already out).
-- KEYS: circuit hash, probe key, for each backend in turn. ARGV[1] cool-down s.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cooldown = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local state = redis.call('HGET', KEYS[i], 'state') or 'closed'
  local verdict = 1
  if state ~= 'closed' then
    local opened = tonumber(redis.call('HGET', KEYS[i], 'opened_at') or '0')
    verdict = 0
    if now - opened >= cooldown and redis.call('SET', KEYS[i + 1], '1', 'NX', 'PX',
        math.floor(cooldown * 1000)) then
      redis.call('HSET', KEYS[i], 'state', 'half_open')
      verdict = 2
    end
  end
  out[#out + 1] = verdict
end
return out
