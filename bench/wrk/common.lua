-- What bench/wrk/single_event.lua and bench/wrk/batch_events.lua share: a per-thread
-- prefix that makes every idempotency key unique, the headers, and the summary line
-- bench/wrk.py reads. Each script loads it with dofile (wrk loads a script once per
-- thread, so every thread gets its own copy).
--
-- Environment: WRK_PATH (default /events), WRK_AUTH (an Authorization header value).

local common = {}
common.path = os.getenv("WRK_PATH") or "/events"
common.prefix = ""
local auth = os.getenv("WRK_AUTH")

function setup(thread)
   thread:set("id", tostring(math.random(1, 1e9)))
end

function init(args)
   common.prefix = (id or tostring(math.random(1, 1e9))) .. "-" .. tostring(os.time())
   wrk.headers["Content-Type"] = "application/json"
   if auth then
      wrk.headers["Authorization"] = auth
   end
end

-- The "JSON {...}" line bench/wrk.py parses; events_per_request scales requests/s.
function common.report(summary, latency, events_per_request)
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "JSON {\"requests\":%d,\"duration_s\":%.3f,\"rps\":%.1f,\"events_per_s\":%.1f,\"mean_ms\":%.2f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"errors\":%d}\n",
      summary.requests, seconds, summary.requests / seconds,
      events_per_request * summary.requests / seconds,
      latency.mean / 1000,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
      summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.status + summary.errors.timeout))
end

return common
