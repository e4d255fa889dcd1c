-- Raises each given field to at least its value (publishing those raised) and returns the
-- whole hash. KEYS[1]: the epoch hash. ARGV: channel, then field, value pairs.
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local v = tonumber(ARGV[i + 1])
  if v > cur then
    redis.call('HSET', KEYS[1], ARGV[i], v)
    redis.call('PUBLISH', ARGV[1], ARGV[i] .. '\n' .. v)
  end
end
return redis.call('HGETALL', KEYS[1])
