-- Raises a scope's epoch to max(redis, local) + 1, stores and publishes it; returns it.
-- KEYS[1]: the epoch hash. ARGV: field, local epoch, channel.
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local loc = tonumber(ARGV[2])
if loc > cur then cur = loc end
cur = cur + 1
redis.call('HSET', KEYS[1], ARGV[1], cur)
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\n' .. cur)
return cur
