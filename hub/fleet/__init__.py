"""The fleet: devices, plain deployments and staged rollouts, and device progress.

- states.py: the one transition table a device's row of a deployment moves through.
- progress.py: the ingest applier that moves those rows on devices' states and events.
- deployments.py: deploy a version to chosen devices at once (a one-wave rollout).
- rollout_spec.py, rollout_engine.py, rollouts.py: what a rollout is asked, the decisions
  of each pass, and the thread and requests around them.
- probation.py: what devices report of their probation, and what the status shows of it.
- commands.py: the two things fleet code needs from outside (CommandSender, revocations).
"""
