-- wrk script for the ingest benchmark (bench/harness.py: wrk_storm): every request POSTs a
-- distinct single-alert notification. The template file (the script's argument) holds one
-- Alertmanager payload in which @SHARD@ (a label, so each alert has its own target) and @FP@
-- (the fingerprint, so each alert is its own action) are replaced by a per-thread counter.
local threads = {}
local counter = 0
local template
local tid

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local f = assert(io.open(args[1], "r"))
  template = f:read("*a")
  f:close()
  tid = tonumber(wrk.thread:get("tid"))
end

function request()
  counter = counter + 1
  local body = template:gsub("@SHARD@", string.format("wrk%d-%d", tid, counter))
  body = body:gsub("@FP@", string.format("%04x%012x", tid, counter))
  return wrk.format("POST", nil, nil, body)
end
