-- Takes a read hold: refused while a writer holds or waits (writer preference). Each reader is
-- a member of a sorted set scored by its own expiry on the server's clock.
-- KEYS[1]: readers, KEYS[2]: writer, KEYS[3]: waiting writer. ARGV[1]: owner, ARGV[2]: lease
-- in ms. Returns {1, seconds, microseconds} when taken, {0, ms hint} when refused.
local writer = redis.call('pttl', KEYS[2])
if writer ~= -2 then
  return {0, writer}
end
local waiting = redis.call('pttl', KEYS[3])
if waiting ~= -2 then
  return {0, waiting}
end
local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('zrange', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('pexpireat', KEYS[1], last[2])
return {1, tonumber(time[1]), tonumber(time[2])}
