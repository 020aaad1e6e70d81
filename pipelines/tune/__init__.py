"""Ray Tune: the launch planned before anything starts, the driver that runs it, and each
trial (the only place where an algorithm meets Tune and MLflow), with the searchers,
schedulers and callbacks around them."""
