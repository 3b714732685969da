-- Counts a semaphore's live tickets on the server's clock (read only).
-- KEYS[1]: tickets, KEYS[2]: max count. ARGV[1]: the caller's max count.
-- Returns {1, live tickets}, or {-1, stored max} when live tickets have another max count.
local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local live = redis.call('zcount', KEYS[1], string.format('(%d', now), '+inf')
local stored = redis.call('get', KEYS[2])
if live > 0 and stored and tonumber(stored) ~= tonumber(ARGV[1]) then
  return {-1, tonumber(stored)}
end
return {1, live}
