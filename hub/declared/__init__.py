"""The fleet as code: a fleet file (``edgefleet apply -f fleet.toml``) declares groups and
tags, named rollout policies, drift and loop policies per model, and the model version
each group should run. :func:`~hub.declared.plan.plan` says what applying it would change
(``edgefleet diff``); :func:`~hub.declared.apply.apply` makes those changes. Applying the
same file twice changes nothing the second time (docs/fleet-as-code.md, ADR 0027)."""
