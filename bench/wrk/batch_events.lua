-- wrk script: POST /events with WRK_BATCH JSON events per request (default 1000), each
-- with its own idempotency key, shaped like bench.load's (a user of 1000, a channel,
-- properties.seq), so the body costs the client almost nothing to build.
--
--   WRK_BATCH=1000 wrk -t2 -c8 -d10s -s bench/wrk/batch_events.lua http://127.0.0.1:8080
--
-- Environment: WRK_PATH (default /events), WRK_AUTH (an Authorization header value),
-- WRK_BATCH (events per request).

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")
local batch = tonumber(os.getenv("WRK_BATCH") or "1000")
local channels = {"web", "ios", "android"}
local counter = 0

function request()
   local parts = {}
   for i = 1, batch do
      counter = counter + 1
      parts[i] = '{"event_name":"wrk_batch","user_id":"user-' .. (counter % 1000) ..
         '","channel":"' .. channels[counter % 3 + 1] ..
         '","idempotency_key":"wrkb-' .. common.prefix .. '-' .. counter ..
         '","properties":{"seq":' .. counter .. '}}'
   end
   return wrk.format("POST", common.path, nil, "[" .. table.concat(parts, ",") .. "]")
end

function done(summary, latency, requests)
   common.report(summary, latency, batch)
end
