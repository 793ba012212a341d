"""Feature analysis: proxies and the helpers the criteria share."""
