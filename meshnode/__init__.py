"""meshnode: a service mesh with no servers."""
