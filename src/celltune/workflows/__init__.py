"""Orchestration above the stages: one run (train -> tune -> evaluate), a study, the demo, the benchmark."""
