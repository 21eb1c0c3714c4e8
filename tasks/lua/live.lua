-- Live workers per queue: members whose heartbeat has not yet expired.
-- KEYS: one per-queue workers zset each. Returns counts in KEYS order.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', k, '(' .. now, '+inf')
end
return out
