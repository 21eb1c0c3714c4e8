-- A request of an API key ended: give back what admit.lua reserved beyond what it used.
-- The TPM bucket takes the real token count instead of the reservation; the budget moves the
-- worst case out of `reserved` and the actual cost into `spent`.
-- KEYS[1] the key's hash, KEYS[2] its spend hash of the period reserved in ('' without)
-- ARGV[1] tpm (0: none), ARGV[2] tokens reserved, ARGV[3] tokens used,
-- ARGV[4] nano-USD reserved, ARGV[5] nano-USD spent, ARGV[6] seconds the spend hash is kept
local tpm = tonumber(ARGV[1])
if tpm > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local used = tonumber(redis.call('HGET', KEYS[1], 'tpm_used') or '0')
  local at = tonumber(redis.call('HGET', KEYS[1], 'tpm_at') or now)
  used = math.max(0, used - (now - at) * tpm / 60) + tonumber(ARGV[3]) - tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'tpm_used', math.max(0, used), 'tpm_at', now)
end
if KEYS[2] ~= '' then
  local left = redis.call('HINCRBY', KEYS[2], 'reserved', -tonumber(ARGV[4]))
  if left < 0 then redis.call('HSET', KEYS[2], 'reserved', 0) end
  redis.call('HINCRBY', KEYS[2], 'spent', ARGV[5])
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[6]) end
end
return 1
