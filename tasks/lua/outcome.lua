-- A backend finished one job: remember how it went and move its circuit breaker.
-- KEYS[1] circuit hash (state, failures, opened_at), KEYS[2] outcomes list (newest first)
-- ARGV[1] ok (1/0), ARGV[2] time to first token ms, ARGV[3] total ms,
-- ARGV[4] consecutive failures that open, ARGV[5] error rate that opens (0-1),
-- ARGV[6] window s, ARGV[7] fewest outcomes in the window for the rate to count,
-- ARGV[8] outcomes kept. Returns the state after this outcome.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ok = ARGV[1] == '1'
redis.call('LPUSH', KEYS[2], string.format('%.3f:%s:%s:%d', now, ARGV[2], ARGV[3], ok and 1 or 0))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[8]) - 1)
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('EXPIRE', KEYS[1], 86400)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ok then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local open = state == 'half_open' or failures >= tonumber(ARGV[4])
if not open then
  local since, total, bad = now - tonumber(ARGV[6]), 0, 0
  for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    local ts, good = string.match(entry, '^([^:]+):[^:]*:[^:]*:(%d)$')
    if tonumber(ts) < since then break end
    total = total + 1
    if good == '0' then bad = bad + 1 end
  end
  open = total >= tonumber(ARGV[7]) and bad / total >= tonumber(ARGV[5])
end
if open then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', string.format('%.3f', now))
  return 'open'
end
return state
