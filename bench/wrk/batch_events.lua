-- wrk script: POST /events with WRK_BATCH JSON events per request (default 1000), each
-- with its own idempotency key, shaped like bench.load's (a user of 1000, a channel,
-- properties.seq), so the body costs the client almost nothing to build.
--
--   WRK_BATCH=1000 wrk -t2 -c8 -d10s -s bench/wrk/batch_events.lua http://127.0.0.1:8080
--
-- Environment: WRK_PATH (default /events), WRK_AUTH (an Authorization header value),
-- WRK_BATCH (events per request).

local counter = 0
local prefix = ""
local path = os.getenv("WRK_PATH") or "/events"
local auth = os.getenv("WRK_AUTH")
local batch = tonumber(os.getenv("WRK_BATCH") or "1000")
local channels = {"web", "ios", "android"}

function setup(thread)
   thread:set("id", tostring(math.random(1, 1e9)))
end

function init(args)
   prefix = (id or tostring(math.random(1, 1e9))) .. "-" .. tostring(os.time())
   wrk.headers["Content-Type"] = "application/json"
   if auth then
      wrk.headers["Authorization"] = auth
   end
end

function request()
   local parts = {}
   for i = 1, batch do
      counter = counter + 1
      parts[i] = '{"event_name":"wrk_batch","user_id":"user-' .. (counter % 1000) ..
         '","channel":"' .. channels[counter % 3 + 1] ..
         '","idempotency_key":"wrkb-' .. prefix .. '-' .. counter ..
         '","properties":{"seq":' .. counter .. '}}'
   end
   return wrk.format("POST", path, nil, "[" .. table.concat(parts, ",") .. "]")
end

function done(summary, latency, requests)
   io.write(string.format(
      "JSON {\"requests\":%d,\"duration_s\":%.3f,\"rps\":%.1f,\"events_per_s\":%.1f,\"mean_ms\":%.2f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"errors\":%d}\n",
      summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
      batch * summary.requests / (summary.duration / 1e6),
      latency.mean / 1000,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
      summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.status + summary.errors.timeout))
end
