"""Built-in criterion plugins (each a Callback plus a YAML file in conf/criteria/)."""
