-- include: release
-- Release held jobs on each queue in ARGV[3..] (the reaper's pass, so that held jobs move even
-- when nothing else happens on their queue). ARGV[1] key prefix, ARGV[2] ahead.
local now = clock()
for i = 3, #ARGV do release(ARGV[1], ARGV[i], tonumber(ARGV[2]), now) end
return 1
