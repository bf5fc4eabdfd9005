-- Durable publish commands: POST /v1/publications with a publisher token,
-- one commune per request taken in turn from the COMMUNES file.
package.path = package.path .. ";" .. os.getenv("BENCH_LIB") .. "/?.lua"
require "report"

local communes = {}
for line in io.lines(os.getenv("COMMUNES")) do
  communes[#communes + 1] = line
end
local token = os.getenv("TOKEN")
local counter = 0
local offset = 0

setup = function(thread)
  offset = offset + 1
  thread:set("offset", offset * 100000)
end

request = function()
  counter = counter + 1
  local n = (offset or 0) + counter
  local body = string.format(
    '{"communes":["%s"],"title":"Avis municipal n° %d","body":"Travaux de voirie rue de la Mairie : circulation alternée de 8 h à 17 h. Merci de votre compréhension.","category":"roadworks","priority":"normal","notify":false}',
    communes[(n % #communes) + 1], n)
  return wrk.format("POST", "/v1/publications",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end

done = report
