"""The caching engine: store, single flight, downloads, freshness. No ecosystem names."""
