-- Which of a worker's running jobs must stop now: cancelled ones (the flag is set: a client
-- hung up or sent DELETE), ones a later attempt took over, and synchronous ones whose API
-- process (the owner holding the client's connection) is gone, which are flagged here.
-- KEYS[1] API processes zset, KEYS[2..] job hashes; ARGV[1] the worker's id.
-- Returns the ids of the jobs to stop.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local out = {}
for i = 2, #KEYS do
  local job = redis.call('HMGET', KEYS[i], 'id', 'status', 'worker', 'cancel', 'owner')
  local stop = job[4] == '1' or job[2] ~= 'running' or job[3] ~= ARGV[1]
  if not stop and job[5] then
    local alive = redis.call('ZSCORE', KEYS[1], job[5])
    if not alive or tonumber(alive) < now then
      redis.call('HSET', KEYS[i], 'cancel', '1')
      stop = true
    end
  end
  if stop then table.insert(out, job[1] or string.match(KEYS[i], '^.*:job:(.*)$')) end
end
return out
