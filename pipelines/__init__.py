"""The entry points (train, sweep, evaluate, report, package) and, beneath them, one
sub-package per concern: config/, cluster/, tracking/, results/, tune/ (docs/design.md,
"The rooms of pipelines/")."""
