-- Extends the write hold's lease if the owner still holds it.
-- KEYS[2]: writer (KEYS[1], KEYS[3] unused). ARGV[1]: owner, ARGV[2]: lease in ms.
-- Returns 1 if extended, else 0.
if redis.call('get', KEYS[2]) == ARGV[1] then
  return redis.call('pexpire', KEYS[2], ARGV[2])
end
return 0
