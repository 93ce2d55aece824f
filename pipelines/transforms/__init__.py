"""Pure DataFrame -> DataFrame transforms. No IO, no session creation, no collect()."""
