"""Model monitoring: the prediction server's captured traffic against the champion's training data (drift) and
against delayed true labels (live quality). Imports the ML core only (.importlinter); docs/monitoring.md."""
