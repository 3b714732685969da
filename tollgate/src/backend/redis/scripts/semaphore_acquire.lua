-- Takes a semaphore ticket. Tickets are members of a sorted set scored by their expiry on the
-- server's clock; the max count is stored beside them while any ticket is held.
-- KEYS[1]: tickets, KEYS[2]: max count. ARGV[1]: owner, ARGV[2]: lease in ms, ARGV[4]: max.
-- Returns {1, seconds, microseconds} when taken, {0, ms until the first ticket expires} when
-- full, {-1, stored max} when live tickets were taken with another max count.
local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local max = tonumber(ARGV[4])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local held = redis.call('zcard', KEYS[1])
local stored = redis.call('get', KEYS[2])
if held > 0 and stored and tonumber(stored) ~= max then
  return {-1, tonumber(stored)}
end
if held >= max then
  local first = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('zrange', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('set', KEYS[2], ARGV[4])
redis.call('pexpireat', KEYS[1], last[2])
redis.call('pexpireat', KEYS[2], last[2])
return {1, tonumber(time[1]), tonumber(time[2])}
