-- Takes a lock (or a reader-writer lock's write key when there is no reader side).
-- KEYS[1]: the lock key. ARGV[1]: owner, ARGV[2]: lease in ms.
-- Returns {1, seconds, microseconds} (the server's TIME, for the fencing token) when taken,
-- {0, ms until the current hold expires} when busy.
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local now = redis.call('time')
  return {1, tonumber(now[1]), tonumber(now[2])}
end
return {0, redis.call('pttl', KEYS[1])}
