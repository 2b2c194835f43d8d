"""The fleet: devices, plain deployments and staged rollouts, and device progress.

- states.py: the one transition table a device's row of a deployment moves through.
- progress.py: the ingest applier that moves those rows on devices' states and events.
- deployments.py: deploy a version to chosen devices at once.
- rollout_spec.py, rollout_engine.py, rollouts.py: what a rollout is asked, the decisions
  of each pass, and the thread and requests around them.
- commands.py: the two things fleet code needs from outside (CommandSender, revocations).
"""
