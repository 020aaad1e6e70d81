"""The config: composed from conf/ and the command line's overrides, validated against the
schema, and a sweep's overrides turned into search dimensions. Everything here runs before
Ray starts or MLflow is touched; a user's mistake becomes one line (UserError)."""
