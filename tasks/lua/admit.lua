-- Admit one request of an API key against its limits, atomically, or say which one refuses it.
-- RPM and TPM are leaky buckets: `<name>_used` drains at the limit per 60 s. A budget is
-- reserved at its worst case (`reserved`) and settled to the actual cost by settle.lua
-- (`spent`), so concurrent requests can never together spend past it.
-- KEYS[1] the key's hash, KEYS[2] its spend hash for the budget period ('' without a budget)
-- ARGV[1] rpm (0: none), ARGV[2] tpm (0: none), ARGV[3] tokens to reserve,
-- ARGV[4] budget in nano-USD, ARGV[5] worst-case cost in nano-USD, ARGV[6] seconds the
-- spend hash is kept (0: for ever), ARGV[7] '1' to reserve, '0' only to look
-- Returns {refusal ('' admitted, 'rpm', 'tpm', 'too_large', 'budget'), seconds to wait,
-- requests used, tokens used} (numbers as text: Lua numbers would be truncated).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(name, cap)
  if cap <= 0 then return 0 end
  local used = tonumber(redis.call('HGET', KEYS[1], name .. '_used') or '0')
  local at = tonumber(redis.call('HGET', KEYS[1], name .. '_at') or now)
  return math.max(0, used - (now - at) * cap / 60)
end
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local r_used, t_used = level('rpm', rpm), level('tpm', tpm)
local refused, wait = '', 0
if ARGV[7] == '1' then
  if rpm > 0 and r_used + 1 > rpm then
    refused, wait = 'rpm', (r_used + 1 - rpm) * 60 / rpm
  elseif tpm > 0 and tokens > tpm then
    refused = 'too_large'
  elseif tpm > 0 and t_used + tokens > tpm then
    refused, wait = 'tpm', (t_used + tokens - tpm) * 60 / tpm
  elseif KEYS[2] ~= '' then
    local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[2], 'reserved') or '0')
    if spent + reserved + tonumber(ARGV[5]) > tonumber(ARGV[4]) then refused = 'budget' end
  end
  if refused == '' then
    if rpm > 0 then r_used = r_used + 1 end
    if tpm > 0 then t_used = t_used + tokens end
    redis.call('HSET', KEYS[1], 'rpm_used', r_used, 'rpm_at', now, 'tpm_used', t_used, 'tpm_at', now)
    redis.call('EXPIRE', KEYS[1], 86400)
    if KEYS[2] ~= '' then
      redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[5])
      if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[6]) end
    end
  end
end
return {refused, tostring(wait), tostring(r_used), tostring(t_used)}
