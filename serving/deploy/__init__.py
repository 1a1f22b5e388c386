"""EC2 deployment assets: cloud-init user-data, the systemd unit, nginx's site template, the IAM and bucket
policies, the mlops-serving SSM Command document (ssm-document-mlops-serving.json: the only command the deploy
role may run on an instance; docs/ec2.md has the operator register it), the setup script's AWS look-ups
(bootstrap.py) and the requirement hashes' generator (requirements_hashes.py)."""
