-- wrk script: POST /events with one JSON event per request, each with its own
-- idempotency key, so every request is a new event (nothing is deduplicated away).
--
--   wrk -t2 -c64 -d10s -s bench/wrk/single_event.lua http://127.0.0.1:8080
--
-- Environment: WRK_PATH (default /events), WRK_AUTH (an Authorization header value).

local counter = 0
local prefix = ""
local path = os.getenv("WRK_PATH") or "/events"
local auth = os.getenv("WRK_AUTH")

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
   counter = counter + 1
   local body = '{"event_name":"wrk_probe","user_id":"u' .. (counter % 1000) ..
      '","channel":"web","idempotency_key":"wrk-' .. prefix .. '-' .. counter .. '"}'
   return wrk.format("POST", path, nil, body)
end

local statuses = {}

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   io.write(string.format(
      "JSON {\"requests\":%d,\"duration_s\":%.3f,\"rps\":%.1f,\"mean_ms\":%.2f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"errors\":%d}\n",
      summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
      latency.mean / 1000,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
      summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.status + summary.errors.timeout))
end
