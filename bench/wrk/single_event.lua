-- wrk script: POST /events with one JSON event per request, each with its own
-- idempotency key, so every request is a new event (nothing is deduplicated away).
--
--   wrk -t2 -c64 -d10s -s bench/wrk/single_event.lua http://127.0.0.1:8080
--
-- Environment: WRK_PATH (default /events), WRK_AUTH (an Authorization header value).

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")
local counter = 0

function request()
   counter = counter + 1
   local body = '{"event_name":"wrk_probe","user_id":"u' .. (counter % 1000) ..
      '","channel":"web","idempotency_key":"wrk-' .. common.prefix .. '-' .. counter .. '"}'
   return wrk.format("POST", common.path, nil, body)
end

function done(summary, latency, requests)
   common.report(summary, latency, 1)
end
