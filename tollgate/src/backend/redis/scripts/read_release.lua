-- Gives a read hold back (deleting the set with the last reader) and tells waiters.
-- KEYS[1]: readers (KEYS[2], KEYS[3] unused). ARGV[1]: owner, ARGV[3]: release channel.
-- Returns 1 if the reader was there.
if redis.call('zrem', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('zcard', KEYS[1]) == 0 then
  redis.call('del', KEYS[1])
end
redis.call('publish', ARGV[3], '')
return 1
