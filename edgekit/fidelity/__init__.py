"""What a user of each output would see: per-output tasks and metrics, slices, intervals.

``edgekit.verify`` runs the artifact and hands each output here; ``edgekit.gate`` judges the
figures. Nothing here runs a model.
"""
