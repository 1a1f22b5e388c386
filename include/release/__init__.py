"""Releasing a registered model to the prediction servers: export it as a bundle, roll it out, verify it.

`export` turns an MLflow model version into a bundle; `rollout` refreshes a fleet batch by batch against the
three Protocols of `ports`; `targets.local` and `targets.ec2` implement them; `verify` checks that every server
answers exactly as the bundle does; `deploy` wires them for the configured target. This is the only part of the
pipeline that imports the prediction server's modules (the bundle format, the loader, the probe).
"""
