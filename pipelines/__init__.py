"""Entry points (train, sweep, evaluate) and the glue between Hydra, Ray Tune and MLflow."""
