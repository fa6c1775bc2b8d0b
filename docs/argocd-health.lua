-- Argo CD health check for keymigration.io/KeyMigration (Lua 5.1, as Argo CD's gopher-lua).
-- Install: docs/gitops.md (resource.customizations.health.keymigration.io_KeyMigration).
--   Stalled=True   -> Degraded   (failed prefixes or objects, too many failures, invalid spec)
--   Ready=True     -> Healthy    (every prefix migrated)
--   Suspended=True -> Suspended  (spec.suspend)
--   otherwise      -> Progressing, also while the operator has not yet seen the latest spec
--                     (status.observedGeneration older than metadata.generation).
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the keymigration operator"
  return hs
end

local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions

-- A condition written for an older generation says nothing about the current spec.
local function current(c)
  if c == nil then
    return nil
  end
  if generation ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
    return nil
  end
  return c
end

-- The first true condition decides, in this order.
local verdicts = {{"Stalled", "Degraded"}, {"Ready", "Healthy"}, {"Suspended", "Suspended"}}
for _, verdict in ipairs(verdicts) do
  local c = current(condition(conditions, verdict[1]))
  if c ~= nil and c.status == "True" then
    hs.status = verdict[2]
    hs.message = message(c, verdict[1])
    return hs
  end
end

hs.status = "Progressing"
hs.message = message(current(condition(conditions, "Ready")), "Migration in progress")
return hs
