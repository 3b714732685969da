-- Releases a lock if the owner still holds it, and tells waiters.
-- KEYS[1]: the lock key. ARGV[1]: owner, ARGV[3]: release channel. Returns 1 if released.
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[3], '')
  return 1
end
return 0
