"""Past one machine: the Dask cluster the heavy stages can run on (``Settings.compute``).

``flywheel.compute.cluster`` connects to the scheduler named by the settings and runs a
function once per worker, all at the same time (the ranks of a data-parallel job). The stages
stay where they live and choose the engine by configuration: the day's aggregates are mapped over
the workers by a hash of each entity's keys (``flywheel.features.store``), XGBoost trains through
``xgboost.dask`` and the PyTorch MLP with torch DDP on gloo (``flywheel.training.families``).
With ``compute.engine = local`` (the default) nothing here is imported.
"""
