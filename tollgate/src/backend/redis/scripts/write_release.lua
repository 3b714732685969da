-- Releases the write hold if the owner still holds it, and tells waiters.
-- KEYS[2]: writer (KEYS[1], KEYS[3] unused). ARGV[1]: owner, ARGV[3]: release channel.
-- Returns 1 if released.
if redis.call('get', KEYS[2]) == ARGV[1] then
  redis.call('del', KEYS[2])
  redis.call('publish', ARGV[3], '')
  return 1
end
return 0
