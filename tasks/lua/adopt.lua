-- Adopt the accounting ledger of an API process that is gone (api/ledger.py).
-- KEYS[1] API processes (router:apis), KEYS[2] ledger owners, KEYS[3] the ledger of the
-- process to adopt from, KEYS[4] the adopter's ledger; ARGV[1] the process to adopt from,
-- ARGV[2] the adopter. Moves every entry if that process's presence has lapsed; returns
-- them as job id, facts, job id, facts, ... (nothing while it is alive).
local alive = redis.call('ZSCORE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
if alive and tonumber(alive) >= tonumber(t[1]) + tonumber(t[2]) / 1e6 then return {} end
local entries = redis.call('HGETALL', KEYS[3])
for i = 1, #entries, 2 do redis.call('HSET', KEYS[4], entries[i], entries[i + 1]) end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
if #entries > 0 then redis.call('SADD', KEYS[2], ARGV[2]) end
return entries
