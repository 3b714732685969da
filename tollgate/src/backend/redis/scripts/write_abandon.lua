-- A writer that stops waiting withdraws its waiting mark, letting readers in again.
-- KEYS[3]: waiting writer (KEYS[1], KEYS[2] unused). ARGV[3]: release channel, ARGV[5]: the
-- waiting writer's id. Returns 1 if the mark was withdrawn.
if redis.call('get', KEYS[3]) == ARGV[5] then
  redis.call('del', KEYS[3])
  redis.call('publish', ARGV[3], '')
  return 1
end
return 0
