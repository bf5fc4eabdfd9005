-- Commune search: walks through a file of real queries (names, prefixes, postal
-- codes), one request per query, and stops after the whole file.
package.path = package.path .. ";" .. os.getenv("BENCH_LIB") .. "/?.lua"
require "report"

local queries = {}
for line in io.lines(os.getenv("QUERIES")) do
  queries[#queries + 1] = line
end
local sent, answered = 0, 0

request = function()
  sent = sent % #queries + 1
  return wrk.format("GET", "/v1/communes?limit=20&q=" .. queries[sent])
end

response = function(status)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
  answered = answered + 1
  if answered >= #queries then
    wrk.thread:stop()
  end
end

done = report
