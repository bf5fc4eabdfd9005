-- A plain GET of one URL, with the headers given in the HEADERS variable ("a: b|c: d").
package.path = package.path .. ";" .. os.getenv("BENCH_LIB") .. "/?.lua"
require "report"

local extra = os.getenv("HEADERS") or ""
for pair in string.gmatch(extra, "[^|]+") do
  local name, value = pair:match("^%s*([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

done = report
