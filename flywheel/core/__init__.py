"""Settings, profiles, the spec model and its checks, object storage: the bottom layer."""

from flywheel.core import profiles as _profiles  # registers the production profile's derivations

del _profiles
