"""Command-line launchers: simulation, local deployment, plots."""
