"""EC2 deployment assets: systemd unit, cloud-init user-data, IAM policies, and the setup script's AWS look-ups."""
