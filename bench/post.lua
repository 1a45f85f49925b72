-- wrk script: POST one JSON body (a file) with optional extra headers, and print the results as one JSON line.
--   wrk -t1 -c16 -d5s -s bench/post.lua http://127.0.0.1:9200/v1/chat/completions -- body.json "H: v" ...
-- The last line of wrk's output is `BENCH {...}` with requests, seconds, errors and latency percentiles (us).

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    if name then wrk.headers[name] = value end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"seconds":%.6f,"errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
