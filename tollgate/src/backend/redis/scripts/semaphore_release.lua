-- Gives a semaphore ticket back, deletes both keys with the last ticket, and tells waiters.
-- KEYS[1]: tickets, KEYS[2]: max count. ARGV[1]: owner, ARGV[3]: release channel.
-- Returns 1 if the ticket was there.
if redis.call('zrem', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if redis.call('zcard', KEYS[1]) == 0 then
  redis.call('del', KEYS[1], KEYS[2])
end
redis.call('publish', ARGV[3], '')
return 1
