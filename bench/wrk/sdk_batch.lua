-- wrk script: POST batches built by bench.sdk_shapes, exactly as an SDK sends them (its
-- envelope, headers, spacing, gzip) with fresh message ids, one body after another.
--
--   python -m bench.sdk_shapes --sdk analytics-python --key emw_... --out /tmp/b
--   WRK_BODIES=/tmp/b wrk -t1 -c8 -d10s -s bench/wrk/sdk_batch.lua http://127.0.0.1:8080
--
-- Environment: WRK_BODIES, the file of bodies (its .lua beside it has path and headers).
-- Each thread starts at its own offset; after the last body it starts over (repeats
-- are then duplicates: make the file large enough for the run).

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "common.lua")
local file = os.getenv("WRK_BODIES")
local spec = dofile(file .. ".lua")
local bodies = {}
local next_body = 1

local function load()
   local f = assert(io.open(file, "rb"))
   local data = f:read("*a")
   f:close()
   local at = 1
   while at <= #data do
      local a, b, c, d = data:byte(at, at + 3)
      local size = ((a * 256 + b) * 256 + c) * 256 + d
      bodies[#bodies + 1] = data:sub(at + 4, at + 3 + size)
      at = at + 4 + size
   end
end

local base_init = init
function init(args)
   base_init(args)
   load()
   for name, value in pairs(spec.headers) do
      wrk.headers[name] = value
   end
   next_body = (tonumber(id) or 0) % #bodies + 1
end

function request()
   local body = bodies[next_body]
   next_body = next_body % #bodies + 1
   return wrk.format("POST", spec.path, nil, body)
end

function done(summary, latency, requests)
   common.report(summary, latency, spec.batch)
end
