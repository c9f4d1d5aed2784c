"""Pure data and ML logic of wb_pipeline. Nothing under this package imports dagster."""
