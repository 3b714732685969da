-- Extends a semaphore ticket's lease if it has not expired.
-- KEYS[1]: tickets, KEYS[2]: max count. ARGV[1]: owner, ARGV[2]: lease in ms.
-- Returns 1 if extended, else 0.
local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local score = redis.call('zscore', KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  return 0
end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('zrange', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('pexpireat', KEYS[1], last[2])
redis.call('pexpireat', KEYS[2], last[2])
return 1
