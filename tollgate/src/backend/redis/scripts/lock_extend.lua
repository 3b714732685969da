-- Extends a lock's lease if the owner still holds it.
-- KEYS[1]: the lock key. ARGV[1]: owner, ARGV[2]: lease in ms. Returns 1 if extended, else 0.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
