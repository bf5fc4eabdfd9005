-- The read storm after a department-wide alert: feed GETs spread over the
-- communes of WEIGHTS ("code<TAB>population" lines) in proportion to their
-- population, as residents open the app on the push, gzip as the apps ask.
package.path = package.path .. ";" .. os.getenv("BENCH_LIB") .. "/?.lua"
require "report"

local codes, cumulative, total = {}, {}, 0
for line in io.lines(os.getenv("WEIGHTS")) do
  local code, population = line:match("^(%S+)\t(%d+)")
  total = total + math.max(tonumber(population), 1)
  codes[#codes + 1] = code
  cumulative[#cumulative + 1] = total
end
wrk.headers["Accept-Encoding"] = "gzip"

local function pick()
  local r = math.random() * total
  local lo, hi = 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < r then lo = mid + 1 else hi = mid end
  end
  return codes[lo]
end

request = function()
  return wrk.format("GET", "/v1/communes/" .. pick() .. "/feed")
end

done = report
