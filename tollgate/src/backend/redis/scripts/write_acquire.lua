-- Takes the write hold once no reader holds and no other writer holds or waits first. While
-- readers hold, a writer that will wait marks itself as the waiting writer, which turns new
-- readers away (writer preference); the mark lives one lease and each try renews it.
-- KEYS[1]: readers, KEYS[2]: writer, KEYS[3]: waiting writer. ARGV[1]: owner, ARGV[2]: lease
-- in ms, ARGV[4]: '1' to mark this writer as waiting, ARGV[5]: the waiting writer's id.
-- Returns {1, seconds, microseconds} when taken, {0, ms hint} when refused.
local writer = redis.call('pttl', KEYS[2])
if writer ~= -2 then
  return {0, writer}
end
local waiting = redis.call('get', KEYS[3])
if waiting and waiting ~= ARGV[5] then
  return {0, redis.call('pttl', KEYS[3])}
end
local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local first = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then
  if ARGV[4] == '1' then
    redis.call('set', KEYS[3], ARGV[5], 'PX', ARGV[2])
  end
  return {0, tonumber(first[2]) - now}
end
if waiting then
  redis.call('del', KEYS[3])
end
redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {1, tonumber(time[1]), tonumber(time[2])}
