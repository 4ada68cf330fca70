"""One file per method; each builds `Delta` modules (petl.methods.base) at the sites it modifies."""
