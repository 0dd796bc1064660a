-- wrk script: POSTs pre-signed FAL webhooks read from a file, each wrk thread its own slice.
--
--   wrk -t T -c C -d D -s bench/feed.lua URL -- FEED T RESULT
--
-- FEED has one webhook a line: request id, user id, timestamp, signature, body (tab-separated;
-- JSON bodies hold no raw tabs or newlines). Thread k of T sends lines k, k+T, k+2T, ... and
-- starts its slice over only when it runs out ("wrapped" in RESULT counts those restarts: a
-- wrapped run sent repeats, which the product answers as cheap duplicates). RESULT gets the
-- run's numbers as JSON.

local threads = {}
local count = 0

function setup(thread)
   thread:set("id", count)
   count = count + 1
   table.insert(threads, thread)
end

function init(args)
   local feed, total = args[1], tonumber(args[2])
   result = args[3]
   requests, position, wrapped = {}, 0, 0
   local index = 0
   for line in io.lines(feed) do
      if index % total == id then
         local rid, user, stamp, signature, body = line:match("^(.-)\t(.-)\t(.-)\t(.-)\t(.*)$")
         requests[#requests + 1] = wrk.format("POST", nil, {
            ["Host"] = "aibots.kz",
            ["Content-Type"] = "application/json",
            ["X-Fal-Webhook-Request-Id"] = rid,
            ["X-Fal-Webhook-User-Id"] = user,
            ["X-Fal-Webhook-Timestamp"] = stamp,
            ["X-Fal-Webhook-Signature"] = signature,
         }, body)
      end
      index = index + 1
   end
   if #requests == 0 then
      error("no webhooks for thread " .. id .. " in " .. feed)
   end
end

function request()
   position = position + 1
   if position > #requests then
      position, wrapped = 1, wrapped + 1
   end
   return requests[position]
end

function done(summary, latency, requests)
   local wraps = 0
   for _, thread in ipairs(threads) do
      wraps = wraps + thread:get("wrapped")
   end
   local errors = summary.errors
   local out = assert(io.open(threads[1]:get("result"), "w"))
   out:write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
      '"wrapped": %d, "threads": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, wraps, count))
   out:close()
end
