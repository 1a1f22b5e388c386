"""EC2 deployment assets: cloud-init user-data, the systemd unit, nginx's site template, the IAM and bucket
policies, the setup script's AWS look-ups (bootstrap.py) and the requirement hashes' generator
(requirements_hashes.py)."""
