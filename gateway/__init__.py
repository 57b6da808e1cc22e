"""cachegate: transparent caching gateway for package repositories on build hosts."""
