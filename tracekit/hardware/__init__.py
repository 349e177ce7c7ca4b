"""Hardware profiles as data: one TOML file per system, every value with its source."""

from tracekit.hardware.profile import Profile, list_profiles, load_profile

__all__ = ["Profile", "list_profiles", "load_profile"]
